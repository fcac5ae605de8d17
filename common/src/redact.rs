//! Keeping secrets out of logs and messages: a URL is shown with its
//! passwords masked (`postgres://app:***@db/clerk`, and the libpq-style
//! `?password=***`), so a start-up banner or a log line can name the
//! database or upstream it uses.

use std::borrow::Cow;

/// Query parameters that carry a password (libpq's and sqlx's names).
const SECRET_PARAMETERS: [&str; 2] = ["password", "sslpassword"];

/// `url` with the password in its userinfo and in its query, if any,
/// replaced by `***`.
pub fn url(url: &str) -> Cow<'_, str> {
    let masked = mask_query(&mask_userinfo(url)).into_owned();
    if masked == url {
        Cow::Borrowed(url)
    } else {
        Cow::Owned(masked)
    }
}

fn mask_userinfo(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else {
        return Cow::Borrowed(url);
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return Cow::Borrowed(url);
    };
    let userinfo = &authority[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    if user.len() == userinfo.len() {
        return Cow::Borrowed(url);
    }
    Cow::Owned(format!(
        "{}{user}:***{}",
        &url[..authority_start],
        &url[authority_start + at..]
    ))
}

fn mask_query(url: &str) -> Cow<'_, str> {
    let Some(query_start) = url.find('?') else {
        return Cow::Borrowed(url);
    };
    let query_end = url[query_start..]
        .find('#')
        .map_or(url.len(), |i| query_start + i);
    let mut changed = false;
    let query: Vec<String> = url[query_start + 1..query_end]
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if SECRET_PARAMETERS.contains(&key.to_ascii_lowercase().as_str()) => {
                changed = true;
                format!("{key}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    if !changed {
        return Cow::Borrowed(url);
    }
    Cow::Owned(format!(
        "{}?{}{}",
        &url[..query_start],
        query.join("&"),
        &url[query_end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn passwords_are_masked_and_the_rest_kept() {
        for (given, shown) in [
            (
                "postgres://app:s3cr%40t@db.internal:5432/clerk?sslmode=require",
                "postgres://app:***@db.internal:5432/clerk?sslmode=require",
            ),
            (
                "postgres://app:p@ss@db/clerk",
                "postgres://app:***@db/clerk",
            ),
            ("postgres://app@db/clerk", "postgres://app@db/clerk"),
            (
                "sqlite://data/clerk-sync.db?mode=rwc",
                "sqlite://data/clerk-sync.db?mode=rwc",
            ),
            ("http://u:pw@sync:50051", "http://u:***@sync:50051"),
            ("https://sync:50051/a@b", "https://sync:50051/a@b"),
            ("not a url", "not a url"),
            (
                "postgres://app@db/clerk?sslmode=require&password=s3cr3t",
                "postgres://app@db/clerk?sslmode=require&password=***",
            ),
            (
                "postgres://app:pw@db/clerk?PASSWORD=s3cr3t&sslpassword=k#frag",
                "postgres://app:***@db/clerk?PASSWORD=***&sslpassword=***#frag",
            ),
            (
                "postgres://db/clerk?user=app&passwords=none",
                "postgres://db/clerk?user=app&passwords=none",
            ),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }
}
