//! Keeping secrets out of logs and messages: a URL is shown with the
//! password of its userinfo masked (`postgres://app:***@db/clerk`), so a
//! start-up banner or a log line can name the database or upstream it uses.

use std::borrow::Cow;

/// `url` with the password in its userinfo, if any, replaced by `***`.
pub fn url(url: &str) -> Cow<'_, str> {
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
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }
}
