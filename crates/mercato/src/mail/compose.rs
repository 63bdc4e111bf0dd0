//! A message's text and HTML from the same paragraphs and links (every
//! template of every context writes its mail this way).

/// An amount of minor units as a reader sees it: `19.99 EUR`.
pub fn amount(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02} {currency}", abs / 100, abs % 100)
}

/// Text safe inside HTML text and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The plain text and the HTML of `paragraphs` followed by `links` (label, URL).
pub fn bodies(paragraphs: &[String], links: &[(&str, String)]) -> (String, String) {
    let mut text = String::new();
    let mut html = String::from("<html><body>");
    for p in paragraphs {
        text.push_str(p);
        text.push_str("\n\n");
        html.push_str(&format!("<p>{}</p>", escape(p)));
    }
    for (label, url) in links {
        text.push_str(&format!("{label}: {url}\n"));
        html.push_str(&format!(
            "<p><a href=\"{}\">{}</a></p>",
            escape(url),
            escape(label)
        ));
    }
    html.push_str("</body></html>");
    (text, html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_as_money() {
        assert_eq!(amount(1999, "EUR"), "19.99 EUR");
        assert_eq!(amount(5, "EUR"), "0.05 EUR");
        assert_eq!(amount(-250, "EUR"), "-2.50 EUR");
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let (text, html) = bodies(
            &["a < b & c".to_owned()],
            &[("Go", "http://x/?a=1&b=2".into())],
        );
        assert!(text.contains("a < b & c") && text.contains("http://x/?a=1&b=2"));
        assert!(html.contains("a &lt; b &amp; c") && html.contains("a=1&amp;b=2"));
    }
}
