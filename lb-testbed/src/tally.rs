//! Summarises a batch of requests: how many each backend got, what failed,
//! and whether the answers show correct NAT (source preserved, answers from
//! the frontend).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};

use super::client::RequestResult;

/// Width of a 100 % bar.
const BAR_WIDTH: usize = 40;

pub struct Tally {
    frontend: SocketAddr,
    client: Ipv4Addr,
    total: usize,
    per_backend: BTreeMap<String, usize>,
    failures: BTreeMap<String, usize>,
    /// Answers whose backend saw another source than the client's address.
    source_rewritten: usize,
    /// Answers that did not come from the frontend.
    wrong_reply_source: usize,
}

impl Tally {
    /// Tallies `results` of requests from `client` to `frontend`. Every name
    /// in `backends` gets a row, also when it got nothing.
    pub fn new<'a>(
        frontend: SocketAddr,
        client: Ipv4Addr,
        backends: impl IntoIterator<Item = &'a str>,
        results: &[RequestResult],
    ) -> Tally {
        let mut tally = Tally {
            frontend,
            client,
            total: results.len(),
            per_backend: backends.into_iter().map(|b| (b.to_owned(), 0)).collect(),
            failures: BTreeMap::new(),
            source_rewritten: 0,
            wrong_reply_source: 0,
        };
        for result in results {
            match result {
                Ok(reply) => {
                    *tally.per_backend.entry(reply.backend.clone()).or_default() += 1;
                    tally.source_rewritten += usize::from(reply.seen_peer.ip() != client);
                    tally.wrong_reply_source += usize::from(reply.reply_from != frontend);
                }
                Err(e) => *tally.failures.entry(e.to_string()).or_default() += 1,
            }
        }
        tally
    }

    /// How many answers came from `backend`.
    pub fn count(&self, backend: &str) -> usize {
        self.per_backend.get(backend).copied().unwrap_or(0)
    }

    /// The share of all requests `backend` answered, in 0..=1.
    pub fn share(&self, backend: &str) -> f64 {
        self.count(backend) as f64 / self.total.max(1) as f64
    }

    /// What went wrong, one line each; empty when every request got a
    /// correctly NATed answer.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .failures
            .iter()
            .map(|(error, n)| format!("{n} of {} requests failed: {error}", self.total))
            .collect();
        if self.source_rewritten > 0 {
            problems.push(format!(
                "{} answers show the backend saw another source than the client's {}",
                self.source_rewritten, self.client
            ));
        }
        if self.wrong_reply_source > 0 {
            problems.push(format!(
                "{} answers did not come from {}",
                self.wrong_reply_source, self.frontend
            ));
        }
        problems
    }

    /// A histogram, one bar per backend, then the problems if any.
    pub fn render(&self, title: &str) -> String {
        let mut out = format!("{title}: {} requests to {}\n", self.total, self.frontend);
        let name_width = self.per_backend.keys().map(String::len).max().unwrap_or(0);
        for (backend, &n) in &self.per_backend {
            let share = self.share(backend);
            let bar = "█".repeat((share * BAR_WIDTH as f64).round() as usize);
            let _ = writeln!(
                out,
                "  {backend:<name_width$} {bar:<BAR_WIDTH$} {n:>5} {:>5.1}%",
                share * 100.0
            );
        }
        for problem in self.problems() {
            let _ = writeln!(out, "  ✗ {problem}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Reply, RequestError};

    #[test]
    fn counts_shares_and_problems() {
        let frontend: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let client = Ipv4Addr::new(10, 244, 4, 2);
        let reply = |backend: &str, peer: &str, from: SocketAddr| {
            Ok(Reply {
                backend: backend.into(),
                seen_peer: peer.parse().unwrap(),
                reply_from: from,
            })
        };
        let results = vec![
            reply("pod-1", "10.244.4.2:1000", frontend),
            reply("pod-1", "10.244.0.1:1000", frontend),
            reply(
                "pod-2",
                "10.244.4.2:1001",
                "10.244.2.2:8080".parse().unwrap(),
            ),
            Err(RequestError::Timeout),
        ];
        let tally = Tally::new(frontend, client, ["pod-1", "pod-2", "pod-3"], &results);
        assert_eq!(
            (
                tally.count("pod-1"),
                tally.count("pod-2"),
                tally.count("pod-3")
            ),
            (2, 1, 0)
        );
        assert_eq!(tally.share("pod-1"), 0.5);
        assert_eq!(tally.problems().len(), 3, "{:?}", tally.problems());
        assert!(tally.render("TCP").contains("pod-3"));
    }
}
