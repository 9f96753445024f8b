//! What an object store may hold after a crash, judged from its client's
//! log (`tests/clients/s3_crash.py work`): every key holds what its last
//! acknowledged request left, or what the one request in flight when the
//! crash came would have left. Nothing else: no acknowledged object lost,
//! no torn one, no ghost.

use std::collections::BTreeMap;

/// What the store is known to hold between crashes (key -> MD5 of its data).
#[derive(Debug, Default)]
pub struct Expected {
    state: BTreeMap<String, String>,
}

/// One stretch of work between two crashes.
#[derive(Debug)]
pub struct Round {
    /// Per key, what it may hold now (None: nothing).
    allowed: BTreeMap<String, Vec<Option<String>>>,
    pub acked_puts: u64,
    pub acked_dels: u64,
    /// Whether a request was in flight when the crash came.
    pub in_flight: bool,
}

impl Round {
    pub fn acked(&self) -> u64 {
        self.acked_puts + self.acked_dels
    }
}

impl Expected {
    /// What the store may hold after the work `log` records.
    pub fn round(&self, log: &str) -> Round {
        let mut allowed: BTreeMap<String, Vec<Option<String>>> = self
            .state
            .iter()
            .map(|(k, v)| (k.clone(), vec![Some(v.clone())]))
            .collect();
        let mut round = Round {
            allowed: BTreeMap::new(),
            acked_puts: 0,
            acked_dels: 0,
            in_flight: false,
        };
        for line in log.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let (key, value, acked) = match words.as_slice() {
                ["begin", "put", key, md5] => (*key, Some((*md5).to_owned()), false),
                ["begin", "del", key] => (*key, None, false),
                ["ack", "put", key, md5] => (*key, Some((*md5).to_owned()), true),
                ["ack", "del", key] => (*key, None, true),
                _ => continue,
            };
            if acked {
                if value.is_some() {
                    round.acked_puts += 1;
                } else {
                    round.acked_dels += 1;
                }
                allowed.insert(key.to_owned(), vec![value]);
            } else {
                allowed
                    .entry(key.to_owned())
                    .or_insert_with(|| vec![None])
                    .push(value);
            }
            round.in_flight = !acked;
        }
        // An acknowledged state is the last entry; a begun one after it
        // may have landed: only the last two possibilities per key stand.
        for v in allowed.values_mut() {
            let n = v.len();
            if n > 2 {
                v.drain(..n - 2);
            }
        }
        round.allowed = allowed;
        round
    }

    /// What is wrong with `seen` (key -> MD5, the store read back after
    /// the crash) for `round`; `seen` is what is known from now on.
    pub fn check(&mut self, round: &Round, seen: BTreeMap<String, String>) -> Vec<String> {
        let mut wrong = Vec::new();
        for (key, md5) in &seen {
            match round.allowed.get(key) {
                Some(ok) if ok.contains(&Some(md5.clone())) => {}
                other => wrong.push(format!("{key} holds {md5}, allowed {other:?}")),
            }
        }
        for (key, ok) in &round.allowed {
            if !seen.contains_key(key) && !ok.contains(&None) {
                wrong.push(format!("{key} is gone, allowed {ok:?}"));
            }
        }
        self.state = seen;
        wrong
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn acknowledged_writes_must_be_there_and_the_one_in_flight_may_be() {
        let mut e = Expected::default();
        let log = "begin put a m1\nack put a m1\nbegin put b m2\nack put b m2\nbegin del a\n";
        let r = e.round(log);
        assert_eq!((r.acked_puts, r.acked_dels, r.in_flight), (2, 0, true));
        // The delete in flight may or may not have happened.
        assert!(e.check(&r, seen(&[("a", "m1"), ("b", "m2")])).is_empty());
        let r = e.round(log);
        assert!(e.check(&r, seen(&[("b", "m2")])).is_empty());
        // Lost, torn or made up: each is found.
        let mut e = Expected::default();
        let r = e.round("begin put a m1\nack put a m1\n");
        assert_eq!(e.check(&r, seen(&[])).len(), 1, "lost");
        let r = e.round("begin put a m1\nack put a m1\n");
        assert_eq!(e.check(&r, seen(&[("a", "torn")])).len(), 1, "torn");
        let mut e = Expected::default();
        let r = e.round("begin put a m1\n");
        assert_eq!(e.check(&r, seen(&[("z", "m9")])).len(), 1, "ghost");
    }

    #[test]
    fn what_was_known_carries_over_rounds() {
        let mut e = Expected::default();
        let r = e.round("begin put a m1\nack put a m1\n");
        assert!(e.check(&r, seen(&[("a", "m1")])).is_empty());
        let r = e.round("begin put b m2\n");
        assert!(
            e.check(&r, seen(&[("a", "m1")])).is_empty(),
            "b never acked"
        );
        let r = e.round("");
        assert_eq!(e.check(&r, seen(&[])).len(), 1, "a was known");
    }
}
