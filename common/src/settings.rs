//! Parsing secret settings (webhook secrets, bearer tokens, API keys) for
//! clap without echoing them: clap's own "invalid value '…'" message repeats
//! what was given, which puts a near-miss secret in a terminal, a CI log or a
//! crash report. [`SecretParser`]'s message names the setting and says what
//! is wrong, never what was given.

use std::{ffi::OsStr, fmt};

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
