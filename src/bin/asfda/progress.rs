//! Progress on stderr with `indicatif`: a redrawn bar on a terminal, plain lines otherwise (logs
//! and CI keep one line per event instead of carriage-return noise; scripts and tests read them).

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use asfda::finetune::StepReport;

/// Sub-steps of one item on the bar (the fraction done within an item has this resolution).
const TICKS: u64 = 1000;

/// A bar on stderr when it is a terminal, else `None` (plain lines are printed instead).
fn bar(length: u64, template: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(style.progress_chars("#-"));
    Some(bar)
}

/// Progress over several volumes.
pub struct Progress {
    total: usize,
    index: usize,
    label: String,
    bar: Option<ProgressBar>,
    started: Instant,
    item_started: Instant,
    verb: &'static str,
}

impl Progress {
    /// Progress over `total` items; `verb` says what is done to them ("scoring").
    pub fn new(total: usize, verb: &'static str) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            index: 0,
            label: String::new(),
            bar: bar(total.max(1) as u64 * TICKS, "[{bar:24}] {msg}  ETA {eta}"),
            started: now,
            item_started: now,
            verb,
        }
    }

    /// Item `index` (0-based) called `label` starts.
    pub fn start(&mut self, index: usize, label: &str) {
        self.index = index;
        self.label = label.to_string();
        self.item_started = Instant::now();
        match &self.bar {
            Some(_) => self.update(0.0),
            None => eprintln!("[{}/{}] {} {label}", index + 1, self.total, self.verb),
        }
    }

    /// Fraction done within the current item.
    pub fn update(&mut self, fraction: f64) {
        let Some(bar) = &self.bar else { return };
        let fraction = fraction.clamp(0.0, 1.0);
        bar.set_message(format!("{}/{} {} {:3.0}%", self.index + 1, self.total, self.label, fraction * 100.0));
        bar.set_position(self.index as u64 * TICKS + (fraction * TICKS as f64) as u64);
    }

    /// The current item ended; `outcome` is printed on its own line ("done", or the error).
    pub fn finish_item(&mut self, outcome: &str) {
        let seconds = self.item_started.elapsed().as_secs_f64();
        let overall = (self.index + 1) as f64 / self.total.max(1) as f64;
        let eta = if self.index + 1 < self.total { format!(", ETA {}", self.eta(overall)) } else { String::new() };
        let line = format!("[{}/{}] {} {outcome} ({seconds:.1} s{eta})", self.index + 1, self.total, self.label);
        match &self.bar {
            Some(bar) => {
                bar.set_position((self.index + 1) as u64 * TICKS);
                bar.println(line);
                if self.index + 1 == self.total {
                    bar.finish_and_clear();
                }
            }
            None => eprintln!("{line}"),
        }
    }

    /// Remaining time from the mean pace so far.
    fn eta(&self, overall: f64) -> String {
        minutes(if overall <= 0.0 {
            None
        } else {
            Some(self.started.elapsed().as_secs_f64() / overall * (1.0 - overall))
        })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `m:ss`, or `--:--` when not known yet.
fn minutes(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) => {
            let s = s.max(0.0).round() as u64;
            format!("{}:{:02}", s / 60, s % 60)
        }
        None => "--:--".into(),
    }
}

/// Fine-tuning step progress: a bar on a terminal, one line per step otherwise.
pub struct StepBar {
    bar: Option<ProgressBar>,
    started: Instant,
    first: u64,
    total: u64,
}

impl StepBar {
    /// Steps `first + 1 ..= total`.
    pub fn new(first: u64, total: u64) -> StepBar {
        let bar = bar(total, "[{bar:20}] {msg}");
        if let Some(bar) = &bar {
            bar.set_position(first);
        }
        StepBar { bar, started: Instant::now(), first, total }
    }

    /// Step `r` is done (`saved`: a checkpoint was written after it).
    pub fn show(&self, r: &StepReport, saved: bool) {
        let done = (r.step - self.first) as f64;
        let left = (self.total - r.step) as f64;
        let eta = minutes(Some(self.started.elapsed().as_secs_f64() / done.max(1.0) * left));
        let saved = if saved { " [checkpoint saved]" } else { "" };
        let line = format!("step {}/{} {r} ETA {eta}{saved}", r.step, self.total);
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step);
                bar.set_message(line);
                if r.step == self.total {
                    bar.finish();
                }
            }
            None => eprintln!("{line}"),
        }
    }

    /// A message on its own line, above the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }
}
