//! A linearizability checker for recorded histories: the Wing–Gong search with Lowe's memo of
//! (linearized set, state), as in Porcupine and Knossos. Given every operation's call and return
//! time, its input and what it answered, it looks for one order of the operations that respects
//! real time (an operation that returned before another was called comes first) and in which a
//! sequential model gives exactly the recorded answers.
//!
//! The model may be nondeterministic (an operation whose answer was lost may or may not have
//! happened), so the search carries a set of possible states.

use std::collections::{BTreeSet, HashSet};
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Ord + Hash;
    type Input;
    type Output;

    fn init(&self) -> Self::State;

    /// Every state the object can be in after `input` ran on `state` and answered `output`;
    /// empty when that answer is impossible from `state`.
    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> Vec<Self::State>;
}

/// One recorded operation. Times are from one monotonic clock; an operation whose answer never
/// came has `returned: u64::MAX`, so it may take effect at any time after its call.
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    pub client: usize,
    pub input: I,
    pub output: O,
    pub called: u64,
    pub returned: u64,
}

/// Why a history is not linearizable: the operations linearized in the deepest attempt, and the
/// operations that were pending then, none of which could go next.
#[derive(Debug)]
pub struct Violation {
    pub deepest_prefix: Vec<usize>,
    pub stuck_on: Vec<usize>,
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    time: u64,
}

/// A doubly linked list of events, from which a call and its return are lifted together when
/// the call is linearized, and put back on backtracking.
struct Events {
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The position of each operation's return event.
    return_of: Vec<usize>,
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

impl Events {
    fn new<I, O>(history: &[Operation<I, O>]) -> Self {
        let mut events: Vec<Event> = history
            .iter()
            .enumerate()
            .flat_map(|(op, o)| {
                [
                    Event {
                        op,
                        is_call: true,
                        time: o.called,
                    },
                    Event {
                        op,
                        is_call: false,
                        time: o.returned,
                    },
                ]
            })
            .collect();
        // At equal times calls come first: such operations count as concurrent, which never
        // rejects a history that is linearizable.
        events.sort_by_key(|e| (e.time, !e.is_call));
        // Position 0 is the head sentinel; event k sits at position k + 1.
        let n = events.len();
        let mut return_of = vec![0; history.len()];
        for (k, e) in events.iter().enumerate() {
            if !e.is_call {
                return_of[e.op] = k + 1;
            }
        }
        let next = (0..=n).map(|i| if i == n { NIL } else { i + 1 }).collect();
        let prev = (0..=n).map(|i| if i == 0 { NIL } else { i - 1 }).collect();
        Events {
            events,
            next,
            prev,
            return_of,
        }
    }

    fn event(&self, position: usize) -> Event {
        self.events[position - 1]
    }

    fn unlink(&mut self, position: usize) {
        let (p, n) = (self.prev[position], self.next[position]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, position: usize) {
        let (p, n) = (self.prev[position], self.next[position]);
        self.next[p] = position;
        if n != NIL {
            self.prev[n] = position;
        }
    }

    /// Takes a call and its return out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.return_of[self.event(call).op]);
    }

    /// Puts them back (in the reverse order of `lift`).
    fn unlift(&mut self, call: usize) {
        self.relink(self.return_of[self.event(call).op]);
        self.relink(call);
    }
}

/// Checks one object's history against `model`.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Result<(), Violation> {
    let mut events = Events::new(history);
    let mut linearized = vec![0u64; history.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, BTreeSet<M::State>)> = HashSet::new();
    let mut states: BTreeSet<M::State> = BTreeSet::from([model.init()]);
    // The linearized calls, each with the states before it.
    let mut stack: Vec<(usize, BTreeSet<M::State>)> = Vec::new();
    let mut deepest: Vec<usize> = Vec::new();
    let mut cursor = events.next[HEAD];
    while events.next[HEAD] != NIL {
        let event = events.event(cursor);
        if event.is_call {
            let op = &history[event.op];
            let after: BTreeSet<M::State> = states
                .iter()
                .flat_map(|s| model.step(s, &op.input, &op.output))
                .collect();
            if !after.is_empty() {
                let mut marked = linearized.clone();
                marked[event.op / 64] |= 1 << (event.op % 64);
                if seen.insert((marked.clone(), after.clone())) {
                    stack.push((cursor, std::mem::replace(&mut states, after)));
                    linearized = marked;
                    events.lift(cursor);
                    if stack.len() > deepest.len() {
                        deepest = stack.iter().map(|(c, _)| events.event(*c).op).collect();
                    }
                    cursor = events.next[HEAD];
                    continue;
                }
            }
            cursor = events.next[cursor];
        } else {
            // A return whose call is not linearized yet: this branch is dead; backtrack.
            let Some((call, before)) = stack.pop() else {
                return Err(violation(&events, deepest));
            };
            let op = events.event(call).op;
            linearized[op / 64] &= !(1 << (op % 64));
            states = before;
            events.unlift(call);
            cursor = events.next[call];
        }
    }
    Ok(())
}

fn violation(events: &Events, deepest_prefix: Vec<usize>) -> Violation {
    let done: HashSet<usize> = deepest_prefix.iter().copied().collect();
    // The operations that could have been next after the deepest prefix: those not in it whose
    // call came before the first return among the rest.
    let mut rest: Vec<Event> = events
        .events
        .iter()
        .copied()
        .filter(|e| !done.contains(&e.op))
        .collect();
    rest.sort_by_key(|e| (e.time, !e.is_call));
    let stuck_on = rest.iter().take_while(|e| e.is_call).map(|e| e.op).collect();
    Violation {
        deepest_prefix,
        stuck_on,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register with versioned writes: `Write(expected, value)` succeeds iff the version is
    /// `expected`, answering the new version.
    struct Register;

    #[derive(Debug, Clone, Copy)]
    enum In {
        Read,
        Write(u64, i64),
        /// A write whose answer was lost.
        LostWrite(u64, i64),
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Out {
        Read(u64, i64),
        Written(u64),
        Conflict,
        Unknown,
    }

    impl Model for Register {
        type State = (u64, i64);
        type Input = In;
        type Output = Out;

        fn init(&self) -> (u64, i64) {
            (0, 0)
        }

        fn step(&self, s: &(u64, i64), input: &In, output: &Out) -> Vec<(u64, i64)> {
            match (*input, *output) {
                (In::Read, Out::Read(v, x)) if (v, x) == *s => vec![*s],
                (In::Write(e, x), Out::Written(v)) if e == s.0 && v == e + 1 => vec![(v, x)],
                (In::Write(e, _), Out::Conflict) if e != s.0 => vec![*s],
                (In::LostWrite(e, x), Out::Unknown) if e == s.0 => vec![*s, (e + 1, x)],
                (In::LostWrite(..), Out::Unknown) => vec![*s],
                _ => vec![],
            }
        }
    }

    fn op(client: usize, input: In, output: Out, called: u64, returned: u64) -> Operation<In, Out> {
        Operation {
            client,
            input,
            output,
            called,
            returned,
        }
    }

    #[test]
    fn a_sequential_history_that_follows_the_model_passes() {
        let history = [
            op(0, In::Read, Out::Read(0, 0), 0, 1),
            op(0, In::Write(0, 5), Out::Written(1), 2, 3),
            op(1, In::Write(0, 6), Out::Conflict, 4, 5),
            op(1, In::Read, Out::Read(1, 5), 6, 7),
        ];
        assert!(check(&Register, &history).is_ok());
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // The read overlaps the write and the second write; it saw the first write's value.
        let history = [
            op(1, In::Read, Out::Read(1, 5), 0, 10),
            op(0, In::Write(0, 5), Out::Written(1), 1, 3),
            op(2, In::Write(1, 7), Out::Written(2), 4, 12),
            op(0, In::Read, Out::Read(2, 7), 13, 14),
        ];
        assert!(check(&Register, &history).is_ok());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let history = [
            op(0, In::Write(0, 5), Out::Written(1), 0, 1),
            op(1, In::Read, Out::Read(0, 0), 2, 3),
        ];
        let violation = check(&Register, &history).unwrap_err();
        assert_eq!(violation.deepest_prefix, vec![0]);
        assert_eq!(violation.stuck_on, vec![1]);
    }

    #[test]
    fn two_writes_that_both_won_the_same_version_are_caught() {
        // The lost update: concurrent, both answered success from version 0.
        let history = [
            op(0, In::Write(0, 5), Out::Written(1), 0, 10),
            op(1, In::Write(0, 6), Out::Written(1), 1, 11),
        ];
        assert!(check(&Register, &history).is_err());
    }

    #[test]
    fn a_write_that_vanished_before_a_later_read_is_caught() {
        let history = [
            op(0, In::Write(0, 5), Out::Written(1), 0, 1),
            op(1, In::Write(1, 6), Out::Written(2), 2, 3),
            op(0, In::Read, Out::Read(1, 5), 4, 5),
        ];
        assert!(check(&Register, &history).is_err());
    }

    #[test]
    fn a_lost_answer_may_or_may_not_have_taken_effect() {
        let applied = [
            op(0, In::LostWrite(0, 5), Out::Unknown, 0, u64::MAX),
            op(1, In::Read, Out::Read(1, 5), 10, 11),
        ];
        assert!(check(&Register, &applied).is_ok());
        let not_applied = [
            op(0, In::LostWrite(0, 5), Out::Unknown, 0, u64::MAX),
            op(1, In::Read, Out::Read(0, 0), 10, 11),
        ];
        assert!(check(&Register, &not_applied).is_ok());
        let flickers = [
            op(0, In::LostWrite(0, 5), Out::Unknown, 0, u64::MAX),
            op(1, In::Read, Out::Read(1, 5), 10, 11),
            op(1, In::Read, Out::Read(0, 0), 12, 13),
        ];
        assert!(check(&Register, &flickers).is_err());
    }

    #[test]
    fn many_concurrent_clients_are_checked_quickly() {
        // 8 clients, 400 overlapping reads of a register written once at the start: the memo
        // keeps the search from trying every order.
        let mut history = vec![op(0, In::Write(0, 1), Out::Written(1), 0, 1)];
        for i in 0..400u64 {
            history.push(op((i % 8) as usize, In::Read, Out::Read(1, 1), 2 + i, 2 + i + 8));
        }
        assert!(check(&Register, &history).is_ok());
    }
}
