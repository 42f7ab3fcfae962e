//! Budgeted prompt assembly, pure: ranked sections (the system prompt, the step's
//! instruction, its dependencies' outputs, shared context, thread messages, retrieved
//! memories) are fitted to a token budget. The system prompt and the instruction are
//! required: never cut, and if they alone exceed the budget the prompt cannot be built.
//! Every other section is taken in order of rank (lowest first; among equal ranks, in the
//! order given): whole while it fits, then the first that does not fit is cut at a
//! whitespace boundary with a note saying how much was cut (if at least
//! [`MIN_TRIMMED_TOKENS`] of it would remain), and the rest are dropped. Each section counts
//! one token more than its text, for the seam where it is joined to the others.

use serde::{Deserialize, Serialize};
use shared::tokens::{Encoding, SectionRecord, SectionStatus, count, count_until, prefix_within};

/// The fewest tokens of a section worth keeping when it must be cut; below this it is
/// dropped instead.
pub const MIN_TRIMMED_TOKENS: u64 = 32;
/// The distance between the ranks of two kinds.
pub const RANK_STEP: u32 = 1_000;
/// Tokens counted for joining a section to the others.
const SEAM_TOKENS: u64 = 1;

/// What a section of a prompt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The agent's system prompt: required.
    System,
    /// The goal and the step's instruction (and, for planners and reviewers, what they
    /// answer with): required.
    Instruction,
    /// The output of a step this one depends on.
    Dependency,
    /// An entry of the shared context.
    Context,
    /// A message of the workflow's thread.
    Thread,
    /// A retrieved memory of past work.
    Memory,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::System => "system",
            Kind::Instruction => "instruction",
            Kind::Dependency => "dependency",
            Kind::Context => "context",
            Kind::Thread => "thread",
            Kind::Memory => "memory",
        }
    }

    /// Whether a section of this kind must be included whole.
    pub fn required(self) -> bool {
        matches!(self, Kind::System | Kind::Instruction)
    }

    /// The rank of the kind's first section: system and instruction 0, then dependency
    /// outputs, shared context, thread, memories, [`RANK_STEP`] apart so that sections of
    /// one kind can be ranked among themselves (`rank() + i`).
    pub fn rank(self) -> u32 {
        RANK_STEP
            * match self {
                Kind::System | Kind::Instruction => 0,
                Kind::Dependency => 1,
                Kind::Context => 2,
                Kind::Thread => 3,
                Kind::Memory => 4,
            }
    }
}

/// One section of a prompt, its heading included in `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// What the section came from (a memory's or a context entry's id), for the record.
    pub id: Option<String>,
    pub label: String,
    pub kind: Kind,
    /// Lower is kept first.
    pub rank: u32,
    pub text: String,
}

impl Section {
    /// A section ranked by its kind.
    pub fn new(kind: Kind, label: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            id: None,
            label: label.into(),
            kind,
            rank: kind.rank(),
            text: text.into(),
        }
    }
}

/// The sections as fitted: each one's text in the prompt (`None` when dropped), in the order
/// given, and the record of what happened to each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    pub texts: Vec<Option<String>>,
    pub record: Vec<SectionRecord>,
    /// The kept sections' tokens, seams included.
    pub tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the system prompt and the instruction alone take at least {needed} tokens; the window leaves {budget} for the prompt"
)]
pub struct TooLarge {
    pub needed: u64,
    pub budget: u64,
}

/// Fits `sections` into `budget` tokens counted in `encoding`. Deterministic.
pub fn fit(sections: &[Section], budget: u64, encoding: Encoding) -> Result<Fitted, TooLarge> {
    // Counting stops past the whole budget: a section that large cannot be included whole,
    // and how much larger it is changes nothing.
    let tokens: Vec<u64> = sections
        .iter()
        .map(|s| count_until(encoding, &s.text, budget) + SEAM_TOKENS)
        .collect();
    let needed: u64 = sections
        .iter()
        .zip(&tokens)
        .filter(|(s, _)| s.kind.required())
        .map(|(_, t)| t)
        .sum();
    if needed > budget {
        return Err(TooLarge { needed, budget });
    }
    let mut left = budget - needed;
    let mut texts: Vec<Option<String>> = vec![None; sections.len()];
    let mut kept = vec![0u64; sections.len()];
    let mut status = vec![SectionStatus::Dropped; sections.len()];
    let mut order: Vec<usize> = (0..sections.len()).collect();
    order.sort_by_key(|&i| (!sections[i].kind.required(), sections[i].rank, i));
    for i in order {
        let section = &sections[i];
        if section.kind.required() {
            texts[i] = Some(section.text.clone());
            (kept[i], status[i]) = (tokens[i], SectionStatus::Included);
        } else if tokens[i] <= left {
            texts[i] = Some(section.text.clone());
            (kept[i], status[i]) = (tokens[i], SectionStatus::Included);
            left -= tokens[i];
        } else if let Some((text, used)) = trim(
            &section.text,
            tokens[i] - SEAM_TOKENS,
            tokens[i] - SEAM_TOKENS <= budget,
            left,
            encoding,
        ) {
            texts[i] = Some(text);
            (kept[i], status[i]) = (used, SectionStatus::Trimmed);
            left -= used;
        }
    }
    let record = sections
        .iter()
        .enumerate()
        .map(|(i, s)| SectionRecord {
            id: s.id.clone(),
            label: s.label.clone(),
            kind: s.kind.as_str().to_owned(),
            tokens: tokens[i] - SEAM_TOKENS,
            status: status[i],
            kept_tokens: kept[i].saturating_sub(SEAM_TOKENS),
        })
        .collect();
    Ok(Fitted {
        texts,
        record,
        tokens: kept.iter().sum(),
    })
}

/// The longest start of `text` (`total` tokens, or more when `counted_whole` is false)
/// that, cut at whitespace and followed by a note saying how much was cut, takes at most
/// `room` tokens with its seam; with the tokens it takes. `None` when less than
/// [`MIN_TRIMMED_TOKENS`] would remain.
fn trim(
    text: &str,
    total: u64,
    counted_whole: bool,
    room: u64,
    encoding: Encoding,
) -> Option<(String, u64)> {
    // The note's own length, with the largest figures it can hold.
    let note_room = count(encoding, &note(total, total, counted_whole)) + SEAM_TOKENS;
    if room < note_room + MIN_TRIMMED_TOKENS {
        return None;
    }
    let (end, _) = prefix_within(encoding, text, room - note_room);
    let prefix = text[..end].trim_end();
    let kept = count(encoding, prefix);
    if kept < MIN_TRIMMED_TOKENS {
        return None;
    }
    let note = note(total.saturating_sub(kept), total, counted_whole);
    let used = kept + count(encoding, &note) + SEAM_TOKENS;
    (used <= room).then(|| (format!("{prefix}{note}"), used))
}

fn note(cut: u64, total: u64, counted_whole: bool) -> String {
    let more = if counted_whole { "" } else { "more than " };
    format!("\n[… trimmed to fit the context window: {more}{cut} of {more}{total} tokens cut]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sections(dep_words: usize) -> Vec<Section> {
        vec![
            Section::new(Kind::System, "system prompt", "You are the Writer."),
            Section::new(Kind::Instruction, "instruction", "# Your step\nWrite it."),
            Section::new(
                Kind::Dependency,
                "output of `a`",
                format!("# Output of step `a`\n{}", "alpha beta ".repeat(dep_words)),
            ),
            Section::new(
                Kind::Context,
                "shared context",
                format!("# Shared context\n{}", "gamma ".repeat(dep_words)),
            ),
            Section::new(
                Kind::Memory,
                "memory 1",
                "# Memory\nA past review said: cite.",
            ),
        ]
    }

    #[test]
    fn everything_fits_a_large_budget() {
        let fitted = fit(&sections(10), 10_000, Encoding::O200k).unwrap();
        assert!(
            fitted
                .record
                .iter()
                .all(|r| r.status == SectionStatus::Included && r.kept_tokens == r.tokens)
        );
        assert_eq!(
            fitted.texts[2].as_deref(),
            Some(sections(10)[2].text.as_str())
        );
        assert!(fitted.tokens <= 10_000);
    }

    #[test]
    fn lower_ranks_are_trimmed_then_dropped() {
        let s = sections(400);
        let fitted = fit(&s, 300, Encoding::O200k).unwrap();
        let status: Vec<SectionStatus> = fitted.record.iter().map(|r| r.status).collect();
        assert_eq!(
            status,
            [
                SectionStatus::Included,
                SectionStatus::Included,
                SectionStatus::Trimmed,
                SectionStatus::Dropped,
                SectionStatus::Dropped
            ]
        );
        let trimmed = fitted.texts[2].as_deref().unwrap();
        assert!(trimmed.starts_with("# Output of step `a`\nalpha beta"));
        assert!(
            trimmed.contains("trimmed to fit the context window"),
            "{trimmed}"
        );
        assert!(fitted.tokens <= 300);
        assert!(fitted.record[2].kept_tokens < fitted.record[2].tokens);
        assert_eq!(fitted.texts[3], None);
        assert_eq!(fitted.record[3].kept_tokens, 0);
        // The same input, the same answer.
        assert_eq!(fit(&s, 300, Encoding::O200k).unwrap(), fitted);
    }

    #[test]
    fn a_small_section_of_high_rank_beats_a_big_one_of_low_rank() {
        let mut s = sections(400);
        s[4].rank = 0;
        let fitted = fit(&s, 300, Encoding::Estimate).unwrap();
        assert_eq!(fitted.record[4].status, SectionStatus::Included);
        assert_eq!(fitted.record[2].status, SectionStatus::Trimmed);
    }

    #[test]
    fn required_sections_that_do_not_fit_are_an_error() {
        let s = vec![
            Section::new(Kind::System, "system prompt", "word ".repeat(100)),
            Section::new(Kind::Instruction, "instruction", "do it"),
        ];
        let err = fit(&s, 50, Encoding::Cl100k).unwrap_err();
        assert_eq!(err.budget, 50);
        assert!(err.needed > 50);
    }

    #[test]
    fn a_text_without_whitespace_is_cut_on_a_character_boundary() {
        let s = vec![
            Section::new(Kind::Instruction, "instruction", "do it"),
            Section::new(Kind::Dependency, "output", "ü".repeat(2_000)),
        ];
        let fitted = fit(&s, 200, Encoding::Estimate).unwrap();
        assert_eq!(fitted.record[1].status, SectionStatus::Trimmed);
        assert!(fitted.tokens <= 200);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn the_result_always_fits(
            words in proptest::collection::vec(0usize..600, 1..6),
            budget in 20u64..2_000,
            estimate in any::<bool>(),
        ) {
            let encoding = if estimate { Encoding::Estimate } else { Encoding::Cl100k };
            let mut s = vec![Section::new(Kind::Instruction, "instruction", "Do the step.")];
            for (i, n) in words.iter().enumerate() {
                let kind = [Kind::Dependency, Kind::Context, Kind::Thread, Kind::Memory][i % 4];
                s.push(Section::new(kind, format!("s{i}"), "lorem ipsum dolor ".repeat(*n)));
            }
            match fit(&s, budget, encoding) {
                Err(e) => prop_assert!(e.needed > budget),
                Ok(fitted) => {
                    prop_assert!(fitted.tokens <= budget);
                    let joined: String = fitted.texts.iter().flatten().cloned().collect();
                    prop_assert!(count(encoding, &joined) <= budget);
                    for (r, text) in fitted.record.iter().zip(&fitted.texts) {
                        prop_assert_eq!(r.status == SectionStatus::Dropped, text.is_none());
                        prop_assert!(r.kept_tokens <= r.tokens);
                    }
                }
            }
        }
    }
}
