//! Token counting per model family, model context windows, and the record of what a
//! budgeted prompt kept (see docs/token-budgets.md).
//!
//! OpenAI's families are counted exactly with their own encodings (`tiktoken-rs`, which
//! embeds them: nothing is downloaded at run time): `o200k_base` for gpt-4o, gpt-4.1,
//! gpt-4.5, gpt-5, gpt-oss and the o-series, `cl100k_base` for gpt-4 and gpt-3.5. Every
//! other family (Llama, Claude, Gemini, Mistral, Qwen, DeepSeek, …) ships no tokenizer we can
//! embed, so its count is an estimate: one token per 3.5 bytes of UTF-8, rounded up.
//!
//! A chat request is counted by OpenAI's published rule: 3 tokens per message, plus its
//! role, content and name (1 more with a name), plus 3 that prime the reply. Tool
//! definitions and tool calls are counted as their JSON text; an image, audio or file part
//! counts [`MEDIA_PART_TOKENS`]. Both of those are estimates on every family.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;

/// Tokens OpenAI adds around each message (`<|start|>{role}\n{content}<|end|>\n`).
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// Tokens that prime the reply (`<|start|>assistant<|message|>`).
pub const REPLY_PRIMER_TOKENS: u64 = 3;
/// What one non-text content part (an image, audio, a file) counts: an estimate, OpenAI's
/// price of one 1024×1024 image in high detail.
pub const MEDIA_PART_TOKENS: u64 = 765;
/// The window of a model whose family we do not know.
pub const UNKNOWN_WINDOW: u32 = 32_768;
/// The most tokens kept back for the answer by default; less in small windows.
pub const DEFAULT_OUTPUT_RESERVE: u32 = 4_096;
/// Text longer than this is counted in pieces cut at whitespace (see [`count`]).
const PIECE_BYTES: usize = 2_048;
/// The longest run without whitespace counted in one piece (see [`count`]).
const RUN_BYTES: usize = 128;

/// How a model's tokens are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// OpenAI's `o200k_base`, exact.
    O200k,
    /// OpenAI's `cl100k_base`, exact.
    Cl100k,
    /// One token per 3.5 bytes, rounded up.
    Estimate,
}

impl Encoding {
    /// The encoding of `model`, by its name (a provider prefix such as `openai/` is ignored).
    pub fn of(model: &str) -> Self {
        let name = base_name(model);
        let o200k = [
            "gpt-4o",
            "chatgpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "gpt-oss",
        ];
        if o200k.iter().any(|p| name.starts_with(p)) || is_o_series(&name) {
            Encoding::O200k
        } else if [
            "gpt-4",
            "gpt-3.5",
            "gpt-35",
            "text-embedding-3",
            "text-embedding-ada",
        ]
        .iter()
        .any(|p| name.starts_with(p))
        {
            Encoding::Cl100k
        } else {
            Encoding::Estimate
        }
    }

    fn bpe(self) -> Option<&'static CoreBPE> {
        match self {
            Encoding::O200k => Some(tiktoken_rs::o200k_base_singleton()),
            Encoding::Cl100k => Some(tiktoken_rs::cl100k_base_singleton()),
            Encoding::Estimate => None,
        }
    }
}

/// `model` lower-cased, without the provider prefix (`openai/gpt-4o` → `gpt-4o`).
fn base_name(model: &str) -> String {
    model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase()
}

fn is_o_series(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next() == Some('o')
        && chars.next().is_some_and(|c| c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// The tokens of `text` in `encoding`. Exact for OpenAI's encodings, except that text is
/// counted in pieces: cut before whitespace every 2 KiB or so, and inside any run of more
/// than 128 bytes without whitespace (at a character boundary). That bounds the tokenizer's
/// work on pathological input (BPE merging is quadratic in the length of one word, so one
/// 4 MiB word would take seconds); a cut inside a run may add a token. An estimate
/// otherwise: ⌈bytes / 3.5⌉.
pub fn count(encoding: Encoding, text: &str) -> u64 {
    count_until(encoding, text, u64::MAX)
}

/// [`count`], stopping once the count passes `limit`: exact up to `limit`, and above it only
/// a value above `limit`.
pub fn count_until(encoding: Encoding, text: &str, limit: u64) -> u64 {
    let Some(bpe) = encoding.bpe() else {
        return estimate(text);
    };
    let mut total = 0u64;
    for piece in pieces(text) {
        total += bpe.encode_ordinary(piece).len() as u64;
        if total > limit {
            break;
        }
    }
    total
}

/// The longest start of `text` that takes at most `limit` tokens, cut before whitespace
/// (or, in a long run without any, at a piece boundary): its length in bytes and its
/// tokens. One pass over at most that start, however long `text` is.
pub fn prefix_within(encoding: Encoding, text: &str, limit: u64) -> (usize, u64) {
    let Some(bpe) = encoding.bpe() else {
        // ⌈bytes / 3.5⌉ ≤ limit ⇔ bytes ≤ 3.5 × limit.
        let mut end = usize::try_from(limit.saturating_mul(7) / 2)
            .unwrap_or(usize::MAX)
            .min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        if end < text.len()
            && let Some(ws) = text[..end].rfind(char::is_whitespace)
        {
            end = ws;
        }
        return (end, estimate(&text[..end]));
    };
    let (mut end, mut total) = (0usize, 0u64);
    for piece in pieces(text) {
        let n = bpe.encode_ordinary(piece).len() as u64;
        if total + n <= limit {
            (end, total) = (end + piece.len(), total + n);
            continue;
        }
        // The piece that overflows: word by word.
        let mut word_start = 0;
        for (i, c) in piece
            .char_indices()
            .chain(std::iter::once((piece.len(), ' ')))
        {
            if c.is_whitespace() && i > word_start {
                let n = bpe.encode_ordinary(&piece[word_start..i]).len() as u64;
                if total + n > limit {
                    break;
                }
                (end, total) = (end + (i - word_start), total + n);
                word_start = i;
            }
        }
        break;
    }
    (end, total)
}

/// ⌈bytes / 3.5⌉: the estimate for families without an embedded tokenizer.
pub fn estimate(text: &str) -> u64 {
    (text.len() as u64 * 2).div_ceil(7)
}

/// A bound no encoding's count of `text` exceeds: every token covers at least one byte.
pub fn upper_bound(text: &str) -> u64 {
    text.len() as u64
}

/// `text` cut into pieces: before whitespace once a piece has [`PIECE_BYTES`], and inside
/// a run without whitespace every [`RUN_BYTES`].
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut chars = text.char_indices();
    let (mut start, mut run) = (0usize, 0usize);
    let mut done = text.is_empty();
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        for (i, c) in chars.by_ref() {
            let cut = if c.is_whitespace() {
                run = 0;
                i - start >= PIECE_BYTES
            } else {
                run += c.len_utf8();
                run > RUN_BYTES
            };
            if cut && i > start {
                if run > 0 {
                    run = c.len_utf8();
                }
                let piece = &text[start..i];
                start = i;
                return Some(piece);
            }
        }
        done = true;
        Some(&text[start..])
    })
}

/// The tokens of a chat request's prompt: its messages by OpenAI's rule, and its tools.
pub fn count_request(encoding: Encoding, body: &Map<String, Value>) -> u64 {
    count_request_until(encoding, body, u64::MAX)
}

/// [`count_request`], stopping once the count passes `limit` (see [`count_until`]).
pub fn count_request_until(encoding: Encoding, body: &Map<String, Value>, limit: u64) -> u64 {
    let mut total = 0u64;
    request_tokens(body, &mut |text| {
        if total > limit {
            return 0;
        }
        let n = count_until(encoding, text, limit - total);
        total = total.saturating_add(n);
        n
    })
}

/// A bound no encoding's [`count_request`] exceeds, computed from lengths alone (cheap).
pub fn request_upper_bound(body: &Map<String, Value>) -> u64 {
    request_tokens(body, &mut upper_bound)
}

fn request_tokens(body: &Map<String, Value>, text: &mut dyn FnMut(&str) -> u64) -> u64 {
    let mut total = 0u64;
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        total += REPLY_PRIMER_TOKENS;
        for message in messages {
            total += TOKENS_PER_MESSAGE + message_tokens(message, text);
        }
    }
    for key in ["tools", "functions", "response_format"] {
        if let Some(value) = body.get(key) {
            total += text(&value.to_string());
        }
    }
    total
}

fn message_tokens(message: &Value, text: &mut dyn FnMut(&str) -> u64) -> u64 {
    let Some(message) = message.as_object() else {
        return text(&message.to_string());
    };
    let mut total = 0;
    for (key, value) in message {
        total += match (key.as_str(), value) {
            ("content", content) => content_tokens(content, text),
            ("name", Value::String(name)) => text(name) + 1,
            (_, Value::String(s)) => text(s),
            (_, Value::Null) => 0,
            // tool_calls, function_call, …: their JSON.
            (_, other) => text(&other.to_string()),
        };
    }
    total
}

fn content_tokens(content: &Value, text: &mut dyn FnMut(&str) -> u64) -> u64 {
    match content {
        Value::String(s) => text(s),
        Value::Null => 0,
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("text").and_then(Value::as_str) {
                Some(t) => text(t),
                None => MEDIA_PART_TOKENS,
            })
            .sum(),
        other => text(&other.to_string()),
    }
}

/// The context window of `model` (prompt and answer together), by its family, when the
/// configuration gives none. Figures are the providers' published ones, rounded down where
/// versions differ; [`UNKNOWN_WINDOW`] when the family is not known.
pub fn default_window(model: &str) -> u32 {
    let name = base_name(model);
    let has = |p: &str| name.contains(p);
    let starts = |p: &str| name.starts_with(p);
    if starts("gpt-4.1") {
        1_047_576
    } else if starts("gpt-5") {
        400_000
    } else if starts("gpt-4o") || starts("chatgpt-4o") || starts("gpt-4-turbo") || starts("gpt-4.5")
    {
        128_000
    } else if starts("gpt-4-32k") {
        32_768
    } else if starts("gpt-4") {
        8_192
    } else if starts("gpt-3.5") || starts("gpt-35") {
        16_385
    } else if is_o_series(&name) {
        200_000
    } else if starts("gpt-oss") {
        131_072
    } else if has("claude") {
        200_000
    } else if has("gemini") {
        1_048_576
    } else if has("llama-3.1")
        || has("llama-3.2")
        || has("llama-3.3")
        || has("llama3.1")
        || has("llama3.2")
        || has("llama3.3")
        || has("llama-4")
    {
        131_072
    } else if has("llama") {
        8_192
    } else if has("mistral-large") || has("mistral-medium") || has("mistral-small") {
        131_072
    } else if has("mistral") || has("mixtral") || has("codestral") {
        32_768
    } else if has("deepseek") {
        65_536
    } else if has("qwen") {
        32_768
    } else if starts("simulated") {
        // The built-in simulated provider's models.
        128_000
    } else {
        UNKNOWN_WINDOW
    }
}

/// Tokens kept back for the answer in a `window` by default: [`DEFAULT_OUTPUT_RESERVE`], at
/// most a quarter of the window.
pub fn default_output_reserve(window: u32) -> u32 {
    DEFAULT_OUTPUT_RESERVE.min(window / 4)
}

/// What a prompt for a model must fit: its window, less the reserve for the answer, counted
/// in its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Prompt and answer together.
    pub tokens: u32,
    /// Kept back for the answer.
    pub reserve: u32,
    pub encoding: Encoding,
}

impl Window {
    /// The window of `model` by its family, with the default reserve.
    pub fn of_model(model: &str) -> Self {
        let tokens = default_window(model);
        Self {
            tokens,
            reserve: default_output_reserve(tokens),
            encoding: Encoding::of(model),
        }
    }

    /// Tokens a prompt may take.
    pub fn prompt_budget(&self) -> u64 {
        u64::from(self.tokens.saturating_sub(self.reserve))
    }
}

/// How one section of a budgeted prompt fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SectionStatus {
    /// Whole.
    Included,
    /// Cut short, with a note saying so.
    Trimmed,
    /// Left out.
    Dropped,
}

/// One section of a budgeted prompt: what it was and how much of it was kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionRecord {
    /// What it came from (a memory's or a context entry's id), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What it is (`Output of step \`facts\``).
    pub label: String,
    /// Its kind (`system`, `instruction`, `dependency`, `context`, `thread`, `memory`).
    pub kind: String,
    /// Its tokens whole; counting stops past the prompt's budget, so a section larger than
    /// the whole budget shows a figure just above it.
    pub tokens: u64,
    pub status: SectionStatus,
    /// Its tokens in the prompt (0 when dropped).
    pub kept_tokens: u64,
}

/// What a step's prompt was built from, and how it was fitted to the window: small (labels
/// and counts, never the texts), carried on the step's task and shown on the step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptRecord {
    /// The smallest window of the route's targets.
    pub window: u32,
    /// Tokens kept back for the answer.
    pub output_reserve: u32,
    /// How the prompt was counted.
    pub encoding: Encoding,
    /// The prompt's tokens as sent (the sections, tools and formats, message overhead).
    pub prompt_tokens: u64,
    pub sections: Vec<SectionRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_families_are_counted_with_their_encodings() {
        assert_eq!(Encoding::of("gpt-4o-mini"), Encoding::O200k);
        assert_eq!(Encoding::of("openai/gpt-4.1"), Encoding::O200k);
        assert_eq!(Encoding::of("o3-mini"), Encoding::O200k);
        assert_eq!(Encoding::of("gpt-4"), Encoding::Cl100k);
        assert_eq!(Encoding::of("gpt-3.5-turbo"), Encoding::Cl100k);
        assert_eq!(Encoding::of("llama-3.1-8b-instant"), Encoding::Estimate);
        assert_eq!(Encoding::of("claude-sonnet-4"), Encoding::Estimate);
        assert_eq!(Encoding::of("ollama"), Encoding::Estimate);
        // Known counts (OpenAI's tokenizer gives the same).
        assert_eq!(count(Encoding::Cl100k, "hello world"), 2);
        assert_eq!(count(Encoding::O200k, "hello world"), 2);
        assert_eq!(count(Encoding::Cl100k, "tiktoken is great!"), 6);
        assert_eq!(count(Encoding::O200k, "tiktoken is great!"), 6);
        assert_eq!(count(Encoding::Cl100k, ""), 0);
    }

    #[test]
    fn other_families_are_estimated_from_bytes() {
        assert_eq!(count(Encoding::Estimate, ""), 0);
        assert_eq!(count(Encoding::Estimate, "abc"), 1);
        assert_eq!(count(Encoding::Estimate, "abcdefg"), 2);
        assert_eq!(count(Encoding::Estimate, "abcdefgh"), 3);
        assert_eq!(estimate(&"é".repeat(7)), 4);
    }

    #[test]
    fn long_text_is_counted_in_pieces_close_to_the_whole() {
        let prose = "The quick brown fox jumps over the lazy dog. ".repeat(500);
        let whole = tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(&prose)
            .len() as u64;
        let pieced = count(Encoding::O200k, &prose);
        // Cut before whitespace, which is where the tokenizer splits words anyway.
        assert_eq!(pieced, whole);
        let joined: String = pieces(&prose).collect();
        assert_eq!(joined, prose);
        assert!(pieces(&prose).all(|p| p.len() <= PIECE_BYTES + 64));
        // A long run without whitespace, with multi-byte characters, is cut on char
        // boundaries into short pieces, and counted in linear time.
        let run = format!("{} {}", "ü".repeat(5_000), "x".repeat(1 << 20));
        assert_eq!(pieces(&run).collect::<String>(), run);
        assert!(pieces(&run).all(|p| p.split_whitespace().all(|w| w.len() <= RUN_BYTES)));
        let started = std::time::Instant::now();
        let counted = count(Encoding::O200k, &run);
        assert!(counted <= upper_bound(&run));
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        // The longest start within a limit, cut before whitespace.
        for encoding in [Encoding::O200k, Encoding::Cl100k, Encoding::Estimate] {
            let (end, tokens) = prefix_within(encoding, &prose, 300);
            assert!(tokens <= 300 && tokens > 280, "{encoding:?}: {tokens}");
            assert_eq!(count(encoding, &prose[..end]), tokens, "{encoding:?}");
            assert!(prose[end..].starts_with(' '));
            assert_eq!(
                prefix_within(encoding, "short text", 300),
                (10, count(encoding, "short text"))
            );
        }
        // Counting can stop early: exact below the limit, above it past it.
        assert_eq!(count_until(Encoding::O200k, &prose, u64::MAX), whole);
        let partial = count_until(Encoding::O200k, &prose, 100);
        assert!(partial > 100 && partial < whole);
    }

    #[test]
    fn a_request_counts_by_openais_rule_and_never_above_its_bound() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": [{"type": "text", "text": "hello world"}]},
                {"role": "user", "name": "ann", "content": "hi"}
            ]
        });
        let body = body.as_object().unwrap();
        let o200k = |s: &str| count(Encoding::O200k, s);
        let expected = REPLY_PRIMER_TOKENS
            + 3 * TOKENS_PER_MESSAGE
            + o200k("system")
            + o200k("You are helpful.")
            + o200k("user")
            + 2
            + o200k("user")
            + o200k("ann")
            + 1
            + o200k("hi");
        assert_eq!(count_request(Encoding::O200k, body), expected);
        assert!(count_request(Encoding::O200k, body) <= request_upper_bound(body));
        assert!(count_request(Encoding::Estimate, body) <= request_upper_bound(body));
        let mut with_tools = body.clone();
        with_tools.insert(
            "tools".into(),
            json!([{"type": "function", "function": {"name": "calculator"}}]),
        );
        assert!(count_request(Encoding::O200k, &with_tools) > expected);
        let mut with_image = body.clone();
        with_image["messages"][1]["content"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "image_url", "image_url": {"url": "data:,"}}));
        assert_eq!(
            count_request(Encoding::O200k, &with_image),
            expected + MEDIA_PART_TOKENS
        );
    }

    #[test]
    fn windows_come_from_the_family() {
        assert_eq!(default_window("gpt-4o-mini"), 128_000);
        assert_eq!(default_window("openai/gpt-4.1-mini"), 1_047_576);
        assert_eq!(default_window("gpt-4"), 8_192);
        assert_eq!(default_window("claude-3-5-haiku-latest"), 200_000);
        assert_eq!(default_window("gemini-2.0-flash"), 1_048_576);
        assert_eq!(default_window("meta-llama/llama-3.1-8b-instruct"), 131_072);
        assert_eq!(default_window("simulated-1"), 128_000);
        assert_eq!(default_window("fake-model"), UNKNOWN_WINDOW);
        assert_eq!(default_output_reserve(128_000), DEFAULT_OUTPUT_RESERVE);
        assert_eq!(default_output_reserve(1_000), 250);
    }
}
