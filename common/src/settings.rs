//! Parsing secret settings (webhook secrets, bearer tokens, API keys) for
//! clap without echoing them: clap's own "invalid value '…'" message repeats
//! what was given, which puts a near-miss secret in a terminal, a CI log or a
//! crash report. [`SecretParser`]'s message names the setting and says what
//! is wrong, never what was given.

use std::{ffi::OsStr, fmt, time::Duration};

/// A clap value parser for a secret setting: `parse` turns the text into the
/// setting's type, and its error (which must not quote the value) follows the
/// setting's name in the message.
#[derive(Clone)]
pub struct SecretParser<T> {
    /// The flag and variable, as the message names them
    /// (`--webhook-secret (CLERK_WEBHOOK_SECRET)`).
    setting: &'static str,
    /// The setting's own parser; its error says what is wrong.
    parse: fn(&str) -> Result<T, String>,
}

impl<T> SecretParser<T> {
    /// A parser for the setting `setting` (flag and variable).
    pub const fn new(setting: &'static str, parse: fn(&str) -> Result<T, String>) -> Self {
        Self { setting, parse }
    }
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for SecretParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        command: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let reason = match value.to_str().map(self.parse) {
            Some(Ok(parsed)) => return Ok(parsed),
            Some(Err(reason)) => reason,
            None => "not valid UTF-8".to_owned(),
        };
        let message = format!("invalid value for {}: {reason}\n", self.setting);
        Err(clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(command))
    }
}

/// The longest duration a setting takes: about ten years. Anything longer is
/// a typo, and adding it to a clock could overflow.
pub const MAX_SETTING_SECS: u64 = 10 * 365 * 24 * 3600;

/// Parses a whole, positive number of seconds, at most [`MAX_SETTING_SECS`].
pub fn parse_positive_secs(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".to_owned()),
        Ok(secs) if secs > MAX_SETTING_SECS => Err(format!(
            "must be at most {MAX_SETTING_SECS} seconds (ten years)"
        )),
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => Err("expected a whole number of seconds".to_owned()),
    }
}

/// Parses a whole number of seconds, 0 included, at most
/// [`MAX_SETTING_SECS`].
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(secs) if secs > MAX_SETTING_SECS => Err(format!(
            "must be at most {MAX_SETTING_SECS} seconds (ten years)"
        )),
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => Err("expected a whole number of seconds".to_owned()),
    }
}

/// Parses a whole, positive number of milliseconds, at most
/// [`MAX_SETTING_SECS`] worth.
pub fn parse_positive_millis(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 ms".to_owned()),
        Ok(ms) if ms / 1000 > MAX_SETTING_SECS => Err(format!(
            "must be at most {MAX_SETTING_SECS} seconds (ten years)"
        )),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => Err("expected a whole number of milliseconds".to_owned()),
    }
}

/// Parses a positive count (connections, streams, requests).
pub fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number".to_owned()),
    }
}

/// A bearer token a client sends (`authorization: Bearer <token>`); `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Parses a token; the error does not repeat it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "has characters that cannot travel in a header (use printable ASCII)".to_owned(),
            );
        }
        Ok(Self(token.to_owned()))
    }

    /// The token, to put in a header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn token(text: &str) -> Result<String, String> {
        if text.len() >= 8 {
            Ok(text.to_owned())
        } else {
            Err("must have at least 8 characters".to_owned())
        }
    }

    #[derive(Debug, Parser)]
    struct Settings {
        #[arg(long, value_parser = SecretParser::new("--token (TOKEN)", token))]
        token: String,
    }

    #[test]
    fn a_refused_secret_is_named_by_its_setting_and_never_echoed() {
        let error = Settings::try_parse_from(["x", "--token", "hunter2"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--token (TOKEN)"), "{error}");
        assert!(error.contains("at least 8 characters"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let parsed = Settings::try_parse_from(["x", "--token", "correct-horse"]).unwrap();
        assert_eq!(parsed.token, "correct-horse");
    }

    #[test]
    fn durations_and_counts_are_positive_and_bounded() {
        assert_eq!(parse_positive_secs(" 30 "), Ok(Duration::from_secs(30)));
        for bad in ["0", "-1", "soon", "1.5", "18446744073709551615"] {
            assert!(parse_positive_secs(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_secs("0"), Ok(Duration::ZERO));
        assert!(parse_secs("18446744073709551615").is_err());
        assert_eq!(parse_positive_millis("250"), Ok(Duration::from_millis(250)));
        for bad in ["0", "x", "18446744073709551615"] {
            assert!(parse_positive_millis(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_count("64"), Ok(64));
        for bad in ["0", "-3", "many"] {
            assert!(parse_count(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_tokens_are_printable_ascii_and_never_shown() {
        let token = BearerToken::parse(" tok_0123456789 ").unwrap();
        assert_eq!(token.expose(), "tok_0123456789");
        assert!(!format!("{token:?}").contains("0123456789"));
        for bad in ["", "  ", "two words", "ünicode"] {
            let error = BearerToken::parse(bad).unwrap_err();
            assert!(!bad.trim().is_empty() || error.contains("empty"), "{error}");
            assert!(
                !error.contains(bad.trim()) || bad.trim().is_empty(),
                "{error}"
            );
        }
    }
}
