//! Progress on stderr for work over several volumes: a redrawn bar on a terminal, plain lines
//! otherwise (logs and CI keep one line per event instead of carriage-return noise).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    total: usize,
    index: usize,
    label: String,
    tty: bool,
    started: Instant,
    item_started: Instant,
    last_draw: Option<Instant>,
    verb: &'static str,
}

/// Bar redraws at most this often.
const REDRAW: Duration = Duration::from_millis(100);
const BAR: usize = 24;

impl Progress {
    /// Progress over `total` items; `verb` says what is done to them ("scoring").
    pub fn new(total: usize, verb: &'static str) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            index: 0,
            label: String::new(),
            tty: std::io::stderr().is_terminal(),
            started: now,
            item_started: now,
            last_draw: None,
            verb,
        }
    }

    /// Item `index` (0-based) called `label` starts.
    pub fn start(&mut self, index: usize, label: &str) {
        self.index = index;
        self.label = label.to_string();
        self.item_started = Instant::now();
        self.last_draw = None;
        if self.tty {
            self.update(0.0);
        } else {
            eprintln!("[{}/{}] {} {label}", index + 1, self.total, self.verb);
        }
    }

    /// Fraction done within the current item.
    pub fn update(&mut self, fraction: f64) {
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if self.last_draw.is_some_and(|t| now - t < REDRAW) {
            return;
        }
        self.last_draw = Some(now);
        let fraction = fraction.clamp(0.0, 1.0);
        let overall = (self.index as f64 + fraction) / self.total.max(1) as f64;
        let filled = (overall * BAR as f64).round() as usize;
        let bar: String = (0..BAR).map(|i| if i < filled { '#' } else { '-' }).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K[{bar}] {}/{} {} {:3.0}%  ETA {}",
            self.index + 1,
            self.total,
            self.label,
            fraction * 100.0,
            self.eta(overall)
        );
        let _ = err.flush();
    }

    /// The current item ended; `outcome` is printed on its own line ("done", or the error).
    pub fn finish_item(&mut self, outcome: &str) {
        let seconds = self.item_started.elapsed().as_secs_f64();
        let overall = (self.index + 1) as f64 / self.total.max(1) as f64;
        let clear = if self.tty { "\r\x1b[2K" } else { "" };
        let eta = if self.index + 1 < self.total { format!(", ETA {}", self.eta(overall)) } else { String::new() };
        eprintln!("{clear}[{}/{}] {} {outcome} ({seconds:.1} s{eta})", self.index + 1, self.total, self.label);
    }

    /// Remaining time from the mean pace so far.
    fn eta(&self, overall: f64) -> String {
        if overall <= 0.0 {
            return "--:--".into();
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = (elapsed / overall * (1.0 - overall)).max(0.0).round() as u64;
        format!("{}:{:02}", left / 60, left % 60)
    }
}
