"""Schemathesis hooks for scripts/schemathesis.sh: use the tenant the test token is for, so
that generated requests reach the operations instead of stopping at 403 (wrong tenant)."""

import schemathesis


@schemathesis.hook
def map_path_parameters(ctx, path_parameters):
    if path_parameters and "tenant" in path_parameters:
        path_parameters["tenant"] = "shop"
    return path_parameters
