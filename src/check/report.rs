//! What `rcluster check` found: one [`Answer`] per question, with its
//! verdict, a line a person reads, the fix where rcluster has one, and,
//! when the fix was tried, what the same question answered with it. As
//! lines on stdout, or as JSON (`--json`).

use std::fmt::Write as _;

use serde_json::{Value, json};

/// How a question came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Good,
    /// Works, but could be better; not a failure.
    Notice,
    Bad,
    /// The phase could not be run (the server is not HTTP, say).
    NotChecked,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Good => "good",
            Verdict::Notice => "notice",
            Verdict::Bad => "bad",
            Verdict::NotChecked => "not checked",
        }
    }
}

/// One question's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `ready`, `reload keep-alive`, `reload close`, `drain`, `stop`,
    /// `crash`, `own port`.
    pub question: &'static str,
    pub verdict: Verdict,
    /// One line: what was seen, with its figures.
    pub summary: String,
    /// What to do about it, if anything.
    pub fix: Option<String>,
    /// The figures, for `--json`.
    pub figures: Value,
    /// The flag rcluster can cure it with, and the same question asked
    /// again with it.
    pub cure: Option<(&'static str, Box<Answer>)>,
}

impl Answer {
    pub fn new(question: &'static str, verdict: Verdict, summary: String) -> Answer {
        Answer {
            question,
            verdict,
            summary,
            fix: None,
            figures: Value::Null,
            cure: None,
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Answer {
        self.fix = Some(fix.into());
        self
    }

    pub fn figures(mut self, figures: Value) -> Answer {
        self.figures = figures;
        self
    }

    fn json(&self) -> Value {
        json!({
            "question": self.question,
            "verdict": self.verdict.name(),
            "summary": self.summary,
            "fix": self.fix,
            "figures": self.figures,
            "with_cure": self.cure.as_ref().map(|(flag, answer)| json!({
                "flag": flag,
                "verdict": answer.verdict.name(),
                "summary": answer.summary,
                "figures": answer.figures,
            })),
        })
    }
}

/// The whole report.
#[derive(Debug, Default)]
pub struct Report {
    pub command: String,
    pub listen: String,
    pub answers: Vec<Answer>,
    /// Why the server could not be run at all (exit 2).
    pub cannot_run: Option<String>,
}

impl Report {
    /// 0 when every verdict is good (or a notice), 1 otherwise, 2 when the
    /// server could not be run.
    pub fn exit_code(&self) -> u8 {
        if self.cannot_run.is_some() {
            2
        } else if self.answers.iter().any(|a| a.verdict == Verdict::Bad) {
            1
        } else {
            0
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "ok": self.exit_code() == 0,
            "command": self.command,
            "listen": self.listen,
            "cannot_run": self.cannot_run,
            "answers": self.answers.iter().map(Answer::json).collect::<Vec<_>>(),
        })
    }

    /// One line per question, its fix under it, and the cure's result.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail (here and below).
        let _ = writeln!(out, "rcluster check: {} on {}", self.command, self.listen);
        if let Some(why) = &self.cannot_run {
            let _ = writeln!(out, "cannot run it: {why}");
        }
        for answer in &self.answers {
            let mark = match answer.verdict {
                Verdict::Good => "ok  ",
                Verdict::Notice => "note",
                Verdict::Bad => "BAD ",
                Verdict::NotChecked => "--  ",
            };
            let _ = writeln!(out, "{mark} {:<17} {}", answer.question, answer.summary);
            if let Some((flag, cured)) = &answer.cure {
                let _ = writeln!(out, "     {:<17} with {flag}: {}", "", cured.summary);
            }
            if let Some(fix) = &answer.fix {
                let _ = writeln!(out, "     {:<17} fix: {fix}", "");
            }
        }
        let verdict = match self.exit_code() {
            0 => "reload-safe: every answer is good",
            1 => "not reload-safe as run: see the fixes above",
            _ => "not checked: it does not run under rcluster as given",
        };
        let _ = writeln!(out, "{verdict}");
        out
    }
}
