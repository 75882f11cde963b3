//! The Markdown report and the statistics its tables print (percentiles, medians and
//! min–max spreads over rounds).

use std::fmt::Write as _;

use crate::Ctx;

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) md: String,
}

impl Report {
    pub(crate) fn header(&mut self, ctx: &Ctx) {
        let _ = writeln!(
            self.md,
            "<!-- metal-driver-bench {} · rounds {} · driver {} -->\n",
            if ctx.quick { "--quick" } else { "(full)" },
            ctx.rounds,
            ctx.driver_bin.display()
        );
    }

    pub(crate) fn section(&mut self, title: &str) {
        let _ = writeln!(self.md, "\n### {title}\n");
    }

    pub(crate) fn text(&mut self, line: &str) {
        let _ = writeln!(self.md, "{line}");
    }

    pub(crate) fn table(&mut self, head: &[&str], rows: &[Vec<String>]) {
        let _ = writeln!(self.md, "| {} |", head.join(" | "));
        let _ = writeln!(self.md, "|{}", "---|".repeat(head.len()));
        for row in rows {
            let _ = writeln!(self.md, "| {} |", row.join(" | "));
        }
        self.md.push('\n');
    }
}

/// Nearest-rank percentile of an ascending slice.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn sorted(mut xs: Vec<f64>) -> Vec<f64> {
    xs.sort_by(f64::total_cmp);
    xs
}

/// Median and min–max of per-round values.
#[derive(Clone, Copy)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

pub(crate) fn spread(xs: &[f64]) -> Spread {
    let s = sorted(xs.to_vec());
    if s.is_empty() {
        return Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Spread {
        median,
        min: s[0],
        max: s[n - 1],
    }
}

impl Spread {
    /// `median (min–max)` with `digits` decimals; just the value for one round.
    pub(crate) fn fmt(self, digits: usize) -> String {
        if (self.max - self.min).abs() < f64::EPSILON {
            format!("{:.digits$}", self.median)
        } else {
            format!(
                "{:.digits$} ({:.digits$}–{:.digits$})",
                self.median, self.min, self.max
            )
        }
    }
}
