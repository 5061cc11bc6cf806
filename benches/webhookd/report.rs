//! The one table the benchmark prints (figure, value, target, ratio), and the same as JSON.
//!
//! A figure is the median of its runs; a target is either a floor or a ceiling, and the ratio is
//! oriented so that ≥ 1.00 always means "meets the target". Targets are reported, never asserted:
//! the machine is shared and noisy, so a miss is a finding to explain, not a failed build. What
//! does fail the run is a scenario that produced no number at all.

use anyhow::{ensure, Context};
use serde_json::{json, Value};

/// What a figure should reach.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

#[derive(Debug, Clone)]
pub struct Figure {
    pub label: String,
    pub unit: &'static str,
    pub runs: Vec<f64>,
    pub value: f64,
    pub goal: Option<Goal>,
    /// How the target was derived, e.g. "0.8 × L".
    pub target_note: String,
}

impl Figure {
    /// The median of `runs`; an error if there is none or one is not a finite number.
    pub fn new(
        label: impl Into<String>,
        unit: &'static str,
        runs: Vec<f64>,
    ) -> anyhow::Result<Self> {
        let label = label.into();
        ensure!(!runs.is_empty(), "{label}: the scenario produced no figure");
        ensure!(
            runs.iter().all(|v| v.is_finite() && *v >= 0.0),
            "{label}: the scenario produced {runs:?}"
        );
        Ok(Figure {
            value: median(&runs),
            label,
            unit,
            runs,
            goal: None,
            target_note: String::new(),
        })
    }

    pub fn target(mut self, goal: Goal, note: impl Into<String>) -> Self {
        self.goal = Some(goal);
        self.target_note = note.into();
        self
    }

    /// ≥ 1.00 meets the target, whichever way it points.
    pub fn ratio(&self) -> Option<f64> {
        match self.goal? {
            Goal::AtLeast(floor) => Some(self.value / floor),
            Goal::AtMost(ceiling) => Some(ceiling / self.value),
        }
    }

    fn target_text(&self) -> String {
        let bound = match self.goal {
            None => return "—".to_owned(),
            Some(Goal::AtLeast(floor)) => format!("≥ {}", number(floor)),
            Some(Goal::AtMost(ceiling)) => format!("≤ {}", number(ceiling)),
        };
        if self.target_note.is_empty() {
            bound
        } else {
            format!("{bound} ({})", self.target_note)
        }
    }
}

/// The median; `values` must not be empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if !sorted.len().is_multiple_of(2) {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// The `q` quantile (0..=1) of `values` by nearest rank; an error if there are none.
pub fn quantile(values: &[u64], q: f64) -> anyhow::Result<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().context("no samples")
}

/// Three significant digits, without exponent notation.
fn number(value: f64) -> String {
    let magnitude = if value == 0.0 {
        0
    } else {
        value.abs().log10().floor() as i32
    };
    let decimals = (2 - magnitude).clamp(0, 3) as usize;
    format!("{value:.decimals$}")
}

/// The whole run: figures in scenario order, plus the context that makes them comparable.
pub struct Report {
    pub mode: &'static str,
    pub machine: String,
    pub load_before: String,
    pub load_after: String,
    pub parameters: Value,
    pub figures: Vec<Figure>,
    /// Scenario details too long for the table (RSS samples over the backlog drain, …).
    pub details: Value,
    /// Markdown tables printed after the figures.
    pub sections: Vec<String>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "webhookd benchmark ({} mode) on {}; load average before {}, after {}\n\n\
             | figure | value | target | ratio |\n| --- | ---: | --- | ---: |\n",
            self.mode, self.machine, self.load_before, self.load_after
        );
        for figure in &self.figures {
            let ratio = figure
                .ratio()
                .map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"));
            out.push_str(&format!(
                "| {} | {} {} | {} | {} |\n",
                figure.label,
                number(figure.value),
                figure.unit,
                figure.target_text(),
                ratio
            ));
        }
        out.push_str("\nratio ≥ 1.00 meets the target; each value is the median of its runs.\n");
        for section in &self.sections {
            out.push('\n');
            out.push_str(section);
        }
        out
    }

    pub fn json(&self) -> Value {
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|figure| {
                let (kind, target) = match figure.goal {
                    None => (Value::Null, Value::Null),
                    Some(Goal::AtLeast(t)) => (json!("at_least"), json!(t)),
                    Some(Goal::AtMost(t)) => (json!("at_most"), json!(t)),
                };
                json!({
                    "figure": figure.label,
                    "value": figure.value,
                    "unit": figure.unit,
                    "runs": figure.runs,
                    "target": target,
                    "target_kind": kind,
                    "target_note": figure.target_note,
                    "ratio": figure.ratio(),
                })
            })
            .collect();
        json!({
            "mode": self.mode,
            "machine": self.machine,
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "parameters": self.parameters,
            "figures": figures,
            "details": self.details,
            "sections": self.sections,
        })
    }
}

/// What a bare run (D or P) measured.
pub struct Raw {
    pub rate: f64,
    /// The benchmark process's own CPU over the run, per 1,000 messages: the bare consumer's in
    /// D, the bare client's and the receiver's in P.
    pub cpu_seconds_per_1000: f64,
}
