//! What a step's prompt gets beyond its workflow's state (`agents::prompt::StepInputs`),
//! gathered when the step is dispatched: the shared-context entries other steps of its
//! workflow wrote (its dependencies' are their outputs, in the prompt already), the
//! current entry of its own key, which its answer replaces and should build on, the recent
//! messages of its workflow's thread (other agents' insights and the caller's notes; not its
//! dependencies', which are their outputs again), and what
//! the episodic memory recalls of past work like it: its agent's earlier outputs and the
//! reviewers' requests for revision of them, so agents improve across collaborations. The
//! budget (`agents::budget`) ranks these below the step's own inputs and records which
//! were used.

use std::collections::BTreeSet;
use std::time::Duration;

use agents::prompt::{Input, StepInputs};
use agents::workflow::{Step, Workflow};
use futures::future::join_all;
use serde_json::Value;
use shared::artifacts::{ArtifactRef, verify};
use shared::context::Current;
use shared::memory::{self, Hit, Kind, MAX_QUERY_CHARS, Query};
use shared::threads::{self, AuthorKind, ThreadMessage};
use shared::tools::clip;
use tracing::debug;

use crate::deps::Deps;
use crate::orchestrate::OrchestrateError;

/// Most context entries of other steps read into one prompt (each a KV read); the budget
/// trims what does not fit the window.
const MAX_CONTEXT_ENTRIES: usize = 16;
/// Past reviews and past outputs recalled into one prompt: the few best matches of each;
/// more would crowd out the step's own inputs for little gain.
const REVIEWS_PER_STEP: usize = 2;
const WORK_PER_STEP: usize = 2;
/// The newest thread messages one prompt gets (found by reading the thread, which
/// `threads.max_msgs_per_thread` bounds).
const THREAD_MESSAGES: usize = 8;
/// Largest artifact a context entry's reference is followed to (a step's answer); beyond it,
/// the entry's preview. The budget trims what the window cannot take anyway.
const MAX_ENTRY_ARTIFACT_BYTES: u64 = 1 << 20;
/// How long dispatch waits for the memory index: recall helps a step but must not hold
/// the workflow up; without an answer the step goes without.
const RECALL_TIMEOUT: Duration = Duration::from_millis(500);

/// The step's own key's current entry, read once for both its write's base revision and
/// its prompt.
async fn own_entry(
    deps: &Deps,
    wf: &Workflow,
    step: &Step,
) -> Result<Option<Current>, OrchestrateError> {
    let Some(key) = &step.writes else {
        return Ok(None);
    };
    deps.context
        .get(&wf.id.to_string(), key)
        .await
        .map_err(|e| OrchestrateError::Store(e.to_string()))
}

/// The inputs of `step` and its own key's current entry (the base of its write): that entry
/// first, then the keys the workflow's other finished steps wrote, in key order; the thread;
/// the memories. Every read is made at once: they are independent, and each is a round trip
/// on the path between one step's result and the next step's call.
pub(crate) async fn gather(
    deps: &Deps,
    wf: &Workflow,
    step: &Step,
) -> Result<(Option<Current>, StepInputs), OrchestrateError> {
    let keys: Vec<&str> = wf
        .steps
        .iter()
        .filter(|s| s.written.is_some() && s.id != step.id && !step.depends_on.contains(&s.id))
        .filter_map(|s| s.writes.as_deref())
        .filter(|key| Some(*key) != step.writes.as_deref())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(MAX_CONTEXT_ENTRIES)
        .collect();
    let scope = wf.id.to_string();
    let (own, entries, thread, memories) = tokio::join!(
        own_entry(deps, wf, step),
        join_all(keys.iter().map(|key| deps.context.get(&scope, key))),
        thread(deps, wf, step),
        recall(deps, wf, step),
    );
    let own = own?;
    let mut context = Vec::new();
    if let (Some(key), Some(current)) = (&step.writes, &own) {
        let text = entry_text(deps, current).await;
        context.push(input(
            key,
            current,
            text,
            "yours to write: your answer replaces it, so build on it",
        ));
    }
    for (key, entry) in keys.iter().zip(entries) {
        let entry = entry.map_err(|e| OrchestrateError::Store(e.to_string()))?;
        if let Some(current) = entry {
            let text = entry_text(deps, &current).await;
            context.push(input(key, &current, text, "written by another step"));
        }
    }
    Ok((
        own,
        StepInputs {
            context,
            thread,
            memories,
        },
    ))
}

/// The newest messages of the workflow's thread, oldest first, but for those the step's
/// dependencies (or an earlier run of itself) posted. Like recall, it helps the step but
/// must not hold the workflow up: a thread that cannot be read gives none.
async fn thread(deps: &Deps, wf: &Workflow, step: &Step) -> Vec<Input> {
    let thread = threads::workflow_thread(wf.id);
    let mut messages: Vec<ThreadMessage> = Vec::new();
    let mut after = 0;
    loop {
        match threads::read(&deps.js, &thread, after, threads::MAX_READ).await {
            Ok(page) => {
                after = page.messages.last().map_or(after, |m| m.id);
                let more = page.has_more && !page.messages.is_empty();
                messages.extend(page.messages.into_iter().filter(|m| {
                    m.post
                        .step
                        .as_ref()
                        .is_none_or(|s| s != &step.id && !step.depends_on.contains(s))
                }));
                // Keep only what can still be among the newest.
                let extra = messages.len().saturating_sub(THREAD_MESSAGES);
                messages.drain(..extra);
                if !more {
                    break;
                }
            }
            Err(e) => {
                debug!(error = %e, workflow = %wf.id, step = step.id, "the workflow's thread does not read; the step goes without");
                return Vec::new();
            }
        }
    }
    messages.into_iter().map(thread_input).collect()
}

fn thread_input(message: ThreadMessage) -> Input {
    let who = match message.post.author.kind {
        AuthorKind::Agent => format!("agent `{}`", message.post.author.name),
        AuthorKind::Client => format!("caller `{}`", message.post.author.name),
        AuthorKind::System => "Switchyard".to_owned(),
    };
    let label = match &message.post.step {
        Some(step) => format!("{who} on step `{step}`"),
        None => who,
    };
    Input {
        id: format!("thread:{}", message.id),
        label,
        text: message.post.content,
    }
}

/// The memories of past work like `step`'s, by its agent, from other workflows: the
/// reviewers' requests for revision of its work first (approvals carry no advice), then its
/// own earlier outputs. Two searches at once, so neither crowds the other out.
async fn recall(deps: &Deps, wf: &Workflow, step: &Step) -> Vec<Input> {
    let query = |kind: Kind| Query {
        q: clip(
            &format!("{} {}", step.instruction, wf.spec.goal),
            MAX_QUERY_CHARS,
        ),
        agent: step.agent.clone(),
        kind: Some(kind),
        // Room for the hits left out below.
        limit: Some(REVIEWS_PER_STEP.max(WORK_PER_STEP) * 4),
        ..Query::default()
    };
    let (for_reviews, for_work) = (query(Kind::Review), query(Kind::StepOutput));
    let (reviews, work) = tokio::join!(
        memory::search(&deps.client, &for_reviews, RECALL_TIMEOUT),
        memory::search(&deps.client, &for_work, RECALL_TIMEOUT),
    );
    let own = wf.id.to_string();
    let usable = |found: Result<memory::Answer, memory::MemoryError>, n: usize| {
        let hits = found.map(|a| a.hits).unwrap_or_else(|e| {
            debug!(error = %e, workflow = %own, step = step.id, "no memories for the step");
            Vec::new()
        });
        hits.into_iter()
            .filter(|h| h.workflow.as_deref() != Some(own.as_str()))
            .filter(|h| h.approved != Some(true))
            .take(n)
            .map(memory_input)
            .collect::<Vec<_>>()
    };
    let mut inputs = usable(reviews, REVIEWS_PER_STEP);
    inputs.extend(usable(work, WORK_PER_STEP));
    inputs
}

fn memory_input(hit: Hit) -> Input {
    let by = hit.agent.as_deref().unwrap_or("an agent");
    let label = match hit.kind {
        Kind::Review => format!(
            "{by} asked for a revision of past work on \"{}\"",
            clip(&hit.brief, 120)
        ),
        Kind::StepOutput => format!("{by}'s past work on \"{}\"", clip(&hit.brief, 120)),
        Kind::Task => format!("a past deliverable for \"{}\"", clip(&hit.brief, 120)),
    };
    Input {
        id: hit.id,
        label,
        text: hit.text,
    }
}

/// An entry's value as prompt text: a string as it is, a reference to a step's answer too
/// long for the bucket as the answer (read from its artifact: only a step's own, at most
/// [`MAX_ENTRY_ARTIFACT_BYTES`], and only if it is what the reference says), other JSON as
/// JSON.
async fn entry_text(deps: &Deps, current: &Current) -> String {
    let value = &current.envelope.value;
    if let Some(reference) = value
        .get("artifact")
        .and_then(|a| serde_json::from_value::<ArtifactRef>(a.clone()).ok())
        .filter(|r| r.id.starts_with("step-") && r.bytes <= MAX_ENTRY_ARTIFACT_BYTES)
    {
        match deps.artifacts.get(&reference.id).await {
            Ok(Some((_, bytes))) if verify(&reference, &bytes).is_ok() => {
                return String::from_utf8_lossy(&bytes).into_owned();
            }
            // Expired, unreadable or altered: the preview is what there is.
            _ => {
                debug!(artifact = %reference.id, "a context entry's artifact does not read back; its preview goes into the prompt");
                if let Some(preview) = value.get("preview").and_then(Value::as_str) {
                    return preview.to_owned();
                }
            }
        }
    }
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn input(key: &str, current: &Current, text: String, note: &str) -> Input {
    Input {
        id: format!("{key}@{}", current.revision),
        label: format!(
            "`{key}` (revision {}, by {}; {note})",
            current.revision, current.envelope.by
        ),
        text,
    }
}
