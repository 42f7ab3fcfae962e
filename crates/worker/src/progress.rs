//! What a workflow's progress event on `events.workflow.<id>` says (`orchestrate` publishes
//! it): the kind, step and detail the state machine gave, and, for the events the episodic
//! memory is built from, what happened: a finished step's agent, instruction and output, a
//! review's verdict and whose work it judged, a completed workflow's deliverable, each with
//! the workflow's goal and team. Texts are cut (`shared::memory::EVENT_*_CHARS`), so an event
//! stays small whatever a model wrote. Pure: unit-tested without NATS.

use std::collections::BTreeSet;

use agents::workflow::{Progress, ProgressKind, Status, Step, StepKind, StepStatus, Workflow};
use serde_json::{Map, Value, json};
use shared::memory::{EVENT_BRIEF_CHARS, EVENT_TEXT_CHARS};
use shared::tools::clip;

/// The event recording `progress` of `wf` (its state after the event).
pub(crate) fn event(wf: &Workflow, progress: &Progress) -> Value {
    let mut event = json!({
        "workflow": wf.id,
        "status": wf.status,
        "kind": progress.kind,
        "step": progress.step,
        "detail": progress.detail,
    });
    if let (Value::Object(map), Some(more)) = (&mut event, memory_fields(wf, progress)) {
        map.insert("goal".into(), json!(clip(&wf.spec.goal, EVENT_BRIEF_CHARS)));
        map.insert("team".into(), json!(wf.spec.team));
        map.extend(more);
    }
    event
}

/// The fields the memory needs from `progress`, for the kinds it indexes.
fn memory_fields(wf: &Workflow, progress: &Progress) -> Option<Map<String, Value>> {
    let step = progress.step.as_deref().and_then(|id| wf.step(id));
    let mut fields = Map::new();
    match progress.kind {
        ProgressKind::StepFinished => {
            let step = step?;
            fields.insert("agent".into(), json!(step.agent));
            fields.insert("capability".into(), json!(step.capability));
            fields.insert("step_kind".into(), json!(step.kind));
            fields.insert(
                "instruction".into(),
                json!(clip(&step.instruction, EVENT_BRIEF_CHARS)),
            );
            let output = step.output.as_deref().unwrap_or_default();
            fields.insert("output".into(), json!(clip(output, EVENT_TEXT_CHARS)));
        }
        ProgressKind::Reviewed => {
            let (step, verdict) = (step?, wf.review.as_ref()?);
            fields.insert("agent".into(), json!(step.agent));
            fields.insert("judged".into(), json!(judged(wf, step)));
            fields.insert("approved".into(), json!(verdict.approved));
            fields.insert("score".into(), json!(verdict.score));
            fields.insert(
                "feedback".into(),
                json!(clip(&verdict.feedback, EVENT_TEXT_CHARS)),
            );
        }
        ProgressKind::Done if wf.status == Status::Completed => {
            let output = wf.output.as_deref()?;
            // The deliverable's writer: the last synthesis that finished.
            let writer = wf
                .steps
                .iter()
                .rev()
                .find(|s| s.kind == StepKind::Synthesize && s.status == StepStatus::Completed)
                .and_then(|s| s.agent.clone());
            fields.insert("agent".into(), json!(writer));
            fields.insert("output".into(), json!(clip(output, EVENT_TEXT_CHARS)));
        }
        ProgressKind::Done
        | ProgressKind::Planned
        | ProgressKind::StepStarted
        | ProgressKind::StepFailed
        | ProgressKind::Synthesized
        | ProgressKind::ApprovalNeeded
        | ProgressKind::Conflict => return None,
    }
    Some(fields)
}

/// The agents whose work `review` judged: the synthesis it depends on, and that synthesis's
/// inputs (those that completed).
pub(crate) fn judged<'a>(wf: &'a Workflow, review: &Step) -> BTreeSet<&'a str> {
    review
        .depends_on
        .iter()
        .filter_map(|d| wf.step(d))
        .flat_map(|synthesis| {
            std::iter::once(synthesis).chain(synthesis.depends_on.iter().filter_map(|d| wf.step(d)))
        })
        .filter(|s| matches!(s.kind, StepKind::Work | StepKind::Synthesize))
        .filter(|s| s.status == StepStatus::Completed)
        .filter_map(|s| s.agent.as_deref())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agents::workflow::{Spec, Verdict};
    use shared::TaskId;

    fn step(id: &str, kind: StepKind, agent: &str, depends_on: &[&str], output: &str) -> Step {
        Step {
            id: id.into(),
            kind,
            capability: "research".into(),
            instruction: format!("Do {id}"),
            depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
            agent: Some(agent.into()),
            routing: None,
            status: StepStatus::Completed,
            task_id: TaskId::new(),
            dispatched_by: None,
            output: Some(output.into()),
            artifact: None,
            error: None,
            usage: Default::default(),
            tool_calls: Vec::new(),
            writes: None,
            attempt: 0,
            written: None,
            prompt: None,
        }
    }

    fn workflow() -> Workflow {
        let spec: Spec =
            serde_json::from_value(json!({"goal": "Cost out a bike-share", "team": "research"}))
                .unwrap();
        let mut wf = Workflow::new(TaskId::new(), spec, 1, 1_000);
        wf.steps = vec![
            step(
                "facts",
                StepKind::Work,
                "researcher",
                &[],
                &"x".repeat(EVENT_TEXT_CHARS + 10),
            ),
            step(
                "@synthesis",
                StepKind::Synthesize,
                "writer",
                &["facts"],
                "The draft",
            ),
            step(
                "@review",
                StepKind::Review,
                "reviewer",
                &["@synthesis"],
                "{}",
            ),
        ];
        wf.review = Some(Verdict {
            approved: false,
            score: Some(0.4),
            feedback: "Add the maintenance costs.".into(),
        });
        wf
    }

    fn progress(kind: ProgressKind, step: Option<&str>) -> Progress {
        Progress {
            kind,
            step: step.map(str::to_owned),
            detail: None,
        }
    }

    #[test]
    fn a_finished_step_carries_its_agent_instruction_and_cut_output() {
        let wf = workflow();
        let e = event(&wf, &progress(ProgressKind::StepFinished, Some("facts")));
        assert_eq!(e["kind"], "step_finished");
        assert_eq!(e["agent"], "researcher");
        assert_eq!(e["step_kind"], "work");
        assert_eq!(e["instruction"], "Do facts");
        assert_eq!(e["goal"], "Cost out a bike-share");
        assert_eq!(e["team"], "research");
        assert_eq!(
            e["output"].as_str().unwrap().chars().count(),
            EVENT_TEXT_CHARS
        );
    }

    #[test]
    fn a_review_names_the_reviewer_its_verdict_and_whose_work_it_judged() {
        let wf = workflow();
        let e = event(&wf, &progress(ProgressKind::Reviewed, Some("@review")));
        assert_eq!(e["agent"], "reviewer");
        assert_eq!(e["judged"], json!(["researcher", "writer"]));
        assert_eq!(e["approved"], false);
        assert_eq!(e["feedback"], "Add the maintenance costs.");
    }

    #[test]
    fn a_completed_workflow_carries_its_deliverable_and_other_kinds_nothing_more() {
        let mut wf = workflow();
        wf.status = Status::Completed;
        wf.output = Some("The draft".into());
        let e = event(&wf, &progress(ProgressKind::Done, None));
        assert_eq!(e["output"], "The draft");
        assert_eq!(e["agent"], "writer");
        let started = event(&wf, &progress(ProgressKind::StepStarted, Some("facts")));
        let mut keys: Vec<&String> = started.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["detail", "kind", "status", "step", "workflow"]);
        wf.status = Status::Failed;
        assert!(
            event(&wf, &progress(ProgressKind::Done, None))
                .get("output")
                .is_none()
        );
    }
}
