//! The loop's tokens: which source an epoll event is for. Every source the
//! master watches is a [`Source`]; its token is the source's kind in the
//! low bits and its number (a pid, a client's id) above them, so two
//! sources can never share a token, and decoding is one match.

use mio::Token;

use crate::vocab::Pid;

/// Everything the loop watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The `signalfd`.
    Signals,
    /// The notify socket.
    Notify,
    /// The control socket's listener, and one of its clients.
    Control,
    ControlClient(usize),
    /// `--metrics`' listener, and one of its clients.
    Metrics,
    MetricsClient(usize),
    /// One of the log's destinations, when it has room again.
    Log(usize),
    /// A worker's exec pipe: EOF when it exec'd, an errno when it failed.
    ExecPipe(Pid),
    /// A worker's (or a stray's) pidfd: readable once it exited.
    Exited(Pid),
    /// A worker's output pipe, by the id `Output` gave it.
    Output(usize),
    /// The probe (`--probe`) meant for a worker.
    Probe(Pid),
}

const KINDS: usize = 11;
const SHIFT: u32 = 4;
const _: () = assert!(KINDS <= 1 << SHIFT);

impl Source {
    pub fn token(self) -> Token {
        let (kind, number) = match self {
            Source::Signals => (0, 0),
            Source::Notify => (1, 0),
            Source::Control => (2, 0),
            Source::ControlClient(id) => (3, id),
            Source::Metrics => (4, 0),
            Source::MetricsClient(id) => (5, id),
            Source::Log(i) => (6, i),
            Source::ExecPipe(pid) => (7, pid.as_raw() as usize),
            Source::Exited(pid) => (8, pid.as_raw() as usize),
            Source::Output(id) => (9, id),
            Source::Probe(pid) => (10, pid.as_raw() as usize),
        };
        Token(number << SHIFT | kind)
    }

    pub fn of(token: Token) -> Option<Source> {
        let (kind, number) = (token.0 & ((1 << SHIFT) - 1), token.0 >> SHIFT);
        let pid = || Pid::from_raw(number as i32);
        Some(match kind {
            0 => Source::Signals,
            1 => Source::Notify,
            2 => Source::Control,
            3 => Source::ControlClient(number),
            4 => Source::Metrics,
            5 => Source::MetricsClient(number),
            6 => Source::Log(number),
            7 => Source::ExecPipe(pid()),
            8 => Source::Exited(pid()),
            9 => Source::Output(number),
            10 => Source::Probe(pid()),
            _ => return None,
        })
    }

    /// The token of a control client, of a metrics client, of an output
    /// pipe: what `Endpoint` and `Output` register theirs with.
    pub fn control_client(id: usize) -> Token {
        Source::ControlClient(id).token()
    }

    pub fn metrics_client(id: usize) -> Token {
        Source::MetricsClient(id).token()
    }

    pub fn output(id: usize) -> Token {
        Source::Output(id).token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_comes_back_from_its_token() {
        let pid = Pid::from_raw(4_194_303);
        let all = [
            Source::Signals,
            Source::Notify,
            Source::Control,
            Source::ControlClient(1 << 24),
            Source::Metrics,
            Source::MetricsClient(7),
            Source::Log(1),
            Source::ExecPipe(pid),
            Source::Exited(pid),
            Source::Output(0),
            Source::Probe(pid),
        ];
        for source in all {
            assert_eq!(Source::of(source.token()), Some(source));
        }
        let tokens: std::collections::BTreeSet<usize> = all.iter().map(|s| s.token().0).collect();
        assert_eq!(tokens.len(), all.len(), "no two share a token");
    }
}
