//! What a step's prompt gets beyond its workflow's state (`agents::prompt::StepInputs`),
//! gathered when the step is dispatched: the shared-context entries other steps of its
//! workflow wrote (its dependencies' are their outputs, in the prompt already), and the
//! current entry of its own key, which its answer replaces and should build on.

use std::collections::BTreeSet;

use agents::prompt::{Input, StepInputs};
use agents::workflow::{Step, Workflow};
use futures::future::join_all;
use serde_json::Value;
use shared::context::Current;

use crate::deps::Deps;
use crate::orchestrate::OrchestrateError;

/// Most context entries of other steps read into one prompt (each a KV read); the budget
/// trims what does not fit the window.
const MAX_CONTEXT_ENTRIES: usize = 16;

/// The step's own key's current entry, read once for both its write's base revision and
/// its prompt.
pub(crate) async fn own_entry(
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

/// The inputs of `step`: its own key's entry (`own`), then the keys the workflow's other
/// finished steps wrote, in key order.
pub(crate) async fn gather(
    deps: &Deps,
    wf: &Workflow,
    step: &Step,
    own: Option<&Current>,
) -> Result<StepInputs, OrchestrateError> {
    let mut context = Vec::new();
    if let (Some(key), Some(current)) = (&step.writes, own) {
        context.push(input(
            key,
            current,
            "yours to write: your answer replaces it, so build on it",
        ));
    }
    let keys: BTreeSet<&str> = wf
        .steps
        .iter()
        .filter(|s| s.written.is_some() && s.id != step.id && !step.depends_on.contains(&s.id))
        .filter_map(|s| s.writes.as_deref())
        .filter(|key| Some(*key) != step.writes.as_deref())
        .take(MAX_CONTEXT_ENTRIES)
        .collect();
    let scope = wf.id.to_string();
    let entries = join_all(keys.iter().map(|key| deps.context.get(&scope, key))).await;
    for (key, entry) in keys.iter().zip(entries) {
        let entry = entry.map_err(|e| OrchestrateError::Store(e.to_string()))?;
        if let Some(current) = entry {
            context.push(input(key, &current, "written by another step"));
        }
    }
    Ok(StepInputs {
        context,
        ..StepInputs::default()
    })
}

fn input(key: &str, current: &Current, note: &str) -> Input {
    let text = match &current.envelope.value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Input {
        id: format!("{key}@{}", current.revision),
        label: format!(
            "`{key}` (revision {}, by {}; {note})",
            current.revision, current.envelope.by
        ),
        text,
    }
}
