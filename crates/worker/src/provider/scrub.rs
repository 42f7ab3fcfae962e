//! Taking a provider key out of text a provider sent back, in every form it comes back in:
//! the key as configured, the key trimmed (providers read keys trimmed and echo what they
//! read), and masked echoes such as OpenAI's `sk-proj-****…cdEA`, which still give away the
//! key's beginning and end. Runs before any provider text reaches a result, an event, an
//! error message or a log line.

/// What a key, or any word that is a form of it, is replaced with.
pub(crate) const MASK: &str = "*****";
/// Shortest key start a masked echo must share with the key to count as one; shorter
/// starts (`sk-`) are every key's.
const MIN_SHARED_START: usize = 4;
/// Shortest key end a masked echo must share with the key to count as one.
const MIN_SHARED_END: usize = 4;

/// `text` with every form of `secret` replaced by [`MASK`].
pub(crate) fn scrub(text: &str, secret: &str) -> String {
    let trimmed = secret.trim();
    if trimmed.is_empty() {
        return text.to_owned();
    }
    let mut out = text.to_owned();
    for form in [secret, trimmed] {
        if !form.is_empty() {
            out = out.replace(form, MASK);
        }
    }
    mask_partial_echoes(&out, trimmed)
}

/// Replaces each word that echoes part of `key` around a mask (`***`, `...`, `…`): it
/// starts with the key's first characters or ends with its last ones.
fn mask_partial_echoes(text: &str, key: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if is_word_char(c) {
            word.push(c);
        } else {
            out.push_str(masked_word(&word, key));
            word.clear();
            out.push(c);
        }
    }
    out.push_str(masked_word(&word, key));
    out
}

/// Characters that can be part of a key or its masked echo.
fn is_word_char(c: char) -> bool {
    !(c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '`' | ',' | ';' | '(' | ')' | '[' | ']' | '{' | '}' | '<' | '>'
        ))
}

fn masked_word<'a>(word: &'a str, key: &str) -> &'a str {
    if is_partial_echo(word, key) {
        MASK
    } else {
        word
    }
}

/// Whether `word` is a masked echo of `key`: it hides something (`*`, `...`, `…`) and
/// shows a start or end of the key long enough not to be a coincidence.
fn is_partial_echo(word: &str, key: &str) -> bool {
    if !(word.contains("**") || word.contains("...") || word.contains('…')) {
        return false;
    }
    let shown: Vec<&str> = word
        .split(['*', '.', '…'])
        .filter(|part| !part.is_empty())
        .collect();
    let starts = shown
        .first()
        .is_some_and(|s| s.chars().count() >= MIN_SHARED_START && key.starts_with(s));
    let ends = shown
        .last()
        .is_some_and(|s| s.chars().count() >= MIN_SHARED_END && key.ends_with(s));
    starts || ends
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-abcdEFGH1234wxyz";

    #[test]
    fn every_form_of_the_key_is_masked() {
        for (text, secret) in [
            (
                format!("Incorrect API key provided: {KEY}"),
                format!("  {KEY}\n"),
            ),
            (
                format!("Incorrect API key provided: {KEY}."),
                KEY.to_owned(),
            ),
            (format!("key \" {KEY}\t\" refused"), format!(" {KEY}\t")),
            (
                "Incorrect API key provided: sk-proj-****************wxyz. You can find…"
                    .to_owned(),
                KEY.to_owned(),
            ),
            (
                "key sk-proj-abc...wxyz is invalid".to_owned(),
                KEY.to_owned(),
            ),
            ("key `sk-proj-abcd…` is invalid".to_owned(), KEY.to_owned()),
            ("key ****1234wxyz is invalid".to_owned(), KEY.to_owned()),
        ] {
            let out = scrub(&text, &secret);
            assert!(!out.contains("wxyz"), "{text} -> {out}");
            assert!(!out.contains("sk-proj-a"), "{text} -> {out}");
            assert!(out.contains(MASK), "{text} -> {out}");
        }
    }

    #[test]
    fn other_text_is_left_alone() {
        let text = "Rate limit reached for gpt-4o... retry in 2s (****). sk-other-****9999";
        assert_eq!(scrub(text, KEY), text);
        assert_eq!(scrub(text, "   "), text);
        assert_eq!(scrub("", KEY), "");
    }
}
