//! How the CLI talks to the operator: text on a terminal, one JSON document with `--json`, and
//! errors as a stable code and a message that says what to do.

use std::borrow::Cow;
use std::io::{IsTerminal as _, Write as _};

/// An error for the operator: a stable code and a message that says what to do.
#[derive(Debug)]
pub struct CliError {
    /// The stable code (`pin_incorrect`, `not_initialised`, …).
    pub code: Cow<'static, str>,
    /// What went wrong and what to do.
    pub message: String,
}

impl CliError {
    /// A CLI error with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        CliError { code: code.into(), message: message.into() }
    }

    /// A CLI error with a code received from the service.
    pub fn new_owned(code: String, message: String) -> Self {
        CliError { code: code.into(), message }
    }
}

macro_rules! from_coded {
    ($($t:ty),*) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                CliError::new(e.code(), e.to_string())
            }
        }
    )*};
}
from_coded!(
    hsm_adapters::Error,
    sitesign::selftest::SelfTestError,
    sitesign::admin::AdminError,
    sitesign::pki::PkiError,
    sitesign::backends::BackendError,
    sitesign::witness::WitnessError
);

impl From<sitesign::config::ConfigError> for CliError {
    fn from(e: sitesign::config::ConfigError) -> Self {
        CliError::new("config", e.to_string())
    }
}

impl From<sitesign::audit::AuditError> for CliError {
    fn from(e: sitesign::audit::AuditError) -> Self {
        CliError::new("audit_unavailable", e.to_string())
    }
}

impl From<sitesign::store::StoreError> for CliError {
    fn from(e: sitesign::store::StoreError) -> Self {
        sitesign::admin::AdminError::from(e).into()
    }
}

impl From<sitesign::state::StateError> for CliError {
    fn from(e: sitesign::state::StateError) -> Self {
        sitesign::admin::AdminError::from(e).into()
    }
}

/// Where a command's human-readable progress and result go, and whether to print JSON instead.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// JSON instead of text.
    pub json: bool,
}

impl Output {
    /// A line of human-readable output (suppressed with `--json`).
    pub fn line(&self, text: impl AsRef<str>) {
        if !self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", text.as_ref());
        }
    }

    /// Whether JSON output was asked for.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A progress line for a long operation, on standard error (suppressed with `--json`).
    pub fn progress(&self, text: impl AsRef<str>) {
        if !self.json {
            eprintln!("… {}", text.as_ref());
        }
    }

    /// Progress of a long operation with a known size: a bar on a terminal; in scripts (no
    /// terminal, or `--json`) one quiet line on standard error as each step finishes (a JSON
    /// object with `--json`), so that logs stay readable.
    pub fn steps(&self) -> Steps {
        let bar = (!self.json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {percent:>3}% {eta}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Steps { bar, json: self.json, step: String::new(), reported: false }
    }

    /// Progress of a long operation whose size is not known (one request to the service or the
    /// device): a spinner with the time elapsed on a terminal, the quiet `… text` line otherwise
    /// (nothing with `--json`). The spinner is cleared when the guard is dropped.
    pub fn working(&self, text: impl Into<String>) -> Working {
        let text = text.into();
        if self.json {
            return Working(None);
        }
        if !std::io::stderr().is_terminal() {
            self.progress(&text);
            return Working(None);
        }
        let spinner = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            spinner.set_style(style);
        }
        spinner.set_message(text);
        spinner.enable_steady_tick(std::time::Duration::from_millis(120));
        Working(Some(spinner))
    }

    /// The JSON result (printed only with `--json`).
    pub fn json(&self, value: &impl serde::Serialize) {
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = serde_json::to_writer(&mut out, value);
            let _ = writeln!(out);
        }
    }

    /// Asks the operator to confirm on a terminal; without one (a script), `--yes` is required.
    pub fn confirm(&self, question: &str, yes: bool) -> Result<(), CliError> {
        if yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() || self.json {
            return Err(CliError::new(
                "confirmation_required",
                "this changes keys or certificates: re-run with --yes to confirm (or --dry-run to see the plan only)",
            ));
        }
        eprint!("{question} [y/N] ");
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| CliError::new("io", format!("cannot read the answer: {e}")))?;
        if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            Ok(())
        } else {
            Err(CliError::new("cancelled", "nothing was changed"))
        }
    }
}

/// See [`Output::steps`].
#[derive(Debug)]
pub struct Steps {
    bar: Option<indicatif::ProgressBar>,
    json: bool,
    step: String,
    reported: bool,
}

impl Steps {
    /// `done` of `total` of step `step`.
    pub fn update(&mut self, step: &str, done: u64, total: u64) {
        if step != self.step {
            self.step = step.to_owned();
            self.reported = false;
            if let Some(bar) = &self.bar {
                bar.reset();
                bar.set_message(step.to_owned());
            }
        }
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            return;
        }
        if done >= total && !self.reported {
            self.reported = true;
            if self.json {
                eprintln!("{}", serde_json::json!({"progress": step, "done": done, "total": total}));
            } else {
                eprintln!("… {step}: {done} of {total}");
            }
        }
    }

    /// Clears the bar.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// See [`Output::working`].
#[derive(Debug)]
pub struct Working(Option<indicatif::ProgressBar>);

impl Drop for Working {
    fn drop(&mut self) {
        if let Some(spinner) = self.0.take() {
            spinner.finish_and_clear();
        }
    }
}
