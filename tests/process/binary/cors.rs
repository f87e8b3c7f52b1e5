//! Browser storefronts, tested as a browser would: the real binary with `--cors-origin`, and a
//! page on another local origin, opened in headless Chromium, calling `/me/context` with
//! `fetch()`. Chromium sends the preflights and enforces the answers, so what the page reports
//! is what a storefront on that origin gets.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::browser::{PageServer, chromium};
use crate::common::server::{Server, context_url, secret};
use crate::common::{anonymous, manager};

/// The storefront: four calls to the API named by `?api=`, each noted as what the script could
/// see (status, ETag, body) or the error the browser gave instead; the notes are posted back to
/// the page's own server.
fn storefront_page(token: &str) -> String {
    r#"<!doctype html>
<meta charset="utf-8"><title>storefront</title>
<script>
const api = new URLSearchParams(location.search).get("api");
const me = api + "/session-context/shop/me/context";
const auth = { Authorization: "Bearer TOKEN" };
async function attempt(url, init) {
  try {
    const response = await fetch(url, init);
    return { status: response.status, etag: response.headers.get("ETag"), body: await response.text() };
  } catch (e) {
    return { error: String(e) };
  }
}
(async () => {
  const notes = {};
  notes.read = await attempt(me, { headers: auth });
  notes.patch = await attempt(me, {
    method: "PATCH",
    headers: { ...auth, "Content-Type": "application/json", "If-Match": '"1"' },
    body: JSON.stringify({ currency: "USD" }),
  });
  notes.unauthorized = await attempt(me, { headers: { Authorization: "Bearer not-a-token" } });
  notes.forbidden = await attempt(api + "/session-context/shop/context/nobody", { headers: auth });
  await fetch("/report", { method: "POST", body: JSON.stringify(notes) });
})();
</script>
"#
    .replace("TOKEN", token)
}

/// How long one page may take, Chromium's start included.
const PAGE_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_storefront_calls_the_api_from_an_allowed_origin_and_is_refused_from_another() {
    let Some(chromium) = chromium() else { return };
    let token = anonymous("browser-1");
    let allowed = PageServer::start(storefront_page(&token));
    let refused = PageServer::start(storefront_page(&token));
    let server = Server::start(&[
        "--store",
        "memory://",
        "--jwt-secret",
        secret(),
        "--cors-origin",
        &allowed.origin,
    ]);
    let client = reqwest::Client::new();
    let created = client
        .put(format!("{}?upsert=true", context_url(&server, "browser-1")))
        .bearer_auth(manager())
        .json(&json!({"currency": "EUR", "metadata": {"version": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let query = format!("?api={}", server.base);

    // From the allowed origin the script sees every answer, errors included, and the ETag.
    let notes = tokio::task::spawn_blocking({
        let query = query.clone();
        move || allowed.open(chromium, &query, PAGE_DEADLINE)
    });
    let notes: Value = serde_json::from_str(&notes.await.unwrap().expect("the allowed page reports")).unwrap();
    assert_eq!(notes["read"]["status"], json!(200), "{notes}");
    assert_eq!(notes["read"]["etag"], json!("\"1\""), "{notes}");
    let read: Value = serde_json::from_str(notes["read"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(read["sessionId"], json!("browser-1"), "{notes}");
    assert_eq!(notes["patch"]["status"], json!(204), "{notes}");
    assert_eq!(notes["patch"]["etag"], json!("\"2\""), "{notes}");
    assert_eq!(notes["unauthorized"]["status"], json!(401), "{notes}");
    assert!(
        notes["unauthorized"]["body"].as_str().unwrap().contains("unauthorized"),
        "{notes}"
    );
    assert_eq!(notes["forbidden"]["status"], json!(403), "{notes}");

    // From another origin the browser gives the script nothing, and the PATCH never arrives
    // (its preflight is refused).
    let notes = tokio::task::spawn_blocking(move || refused.open(chromium, &query, PAGE_DEADLINE));
    let notes: Value = serde_json::from_str(&notes.await.unwrap().expect("the refused page reports")).unwrap();
    for call in ["read", "patch", "unauthorized", "forbidden"] {
        assert!(notes[call]["error"].is_string(), "{call}: {notes}");
        assert!(notes[call].get("status").is_none(), "{call}: {notes}");
    }
    let after = client
        .get(context_url(&server, "browser-1"))
        .bearer_auth(manager())
        .send()
        .await
        .unwrap();
    let after: Value = after.json().await.unwrap();
    assert_eq!(after["currency"], json!("USD"), "{after}");
    assert_eq!(after["metadata"]["version"], json!(2), "{after}");
}
