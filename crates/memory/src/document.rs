//! Which events become memories, and what each memory holds: a pure reading of one
//! `events.workflow.<id>` progress event (see `docs/protocol.md`). A finished work or
//! synthesis step is its output; a review with feedback is that feedback, about the agents
//! whose work it judged; a completed workflow is its deliverable. Everything else (plans,
//! starts, failures, reviews' own step outputs) is not remembered.

use serde_json::Value;
use shared::memory::Kind;

/// One memory, as the index stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Deterministic, so an event applied again (or a rebuild) finds it: see
    /// [`shared::memory::Hit::id`].
    pub id: String,
    pub kind: Kind,
    pub agent: Option<String>,
    pub about: Vec<String>,
    pub approved: Option<bool>,
    pub team: Option<String>,
    pub scope: String,
    pub workflow: String,
    pub step: Option<String>,
    /// The instruction the work answered (the goal, for a review or a task).
    pub brief: String,
    pub goal: String,
    pub text: String,
}

/// The memory `payload` (an event on `events.workflow.<id>`) makes, if any.
pub fn from_event(payload: &[u8]) -> Option<Document> {
    let event: Value = serde_json::from_slice(payload).ok()?;
    let text = |field: &str| event[field].as_str().map(str::to_owned);
    let workflow = text("workflow")?;
    let goal = text("goal").unwrap_or_default();
    let step = text("step");
    let (kind, id, brief, body) = match event["kind"].as_str()? {
        "step_finished" => {
            let remembered = matches!(event["step_kind"].as_str(), Some("work" | "synthesize"));
            if !remembered {
                return None;
            }
            let step = step.as_deref()?;
            (
                Kind::StepOutput,
                format!("step_output:{workflow}:{step}"),
                text("instruction").unwrap_or_default(),
                text("output")?,
            )
        }
        "reviewed" => (
            Kind::Review,
            format!("review:{workflow}:{}", step.as_deref()?),
            goal.clone(),
            text("feedback")?,
        ),
        "done" => (
            Kind::Task,
            format!("task:{workflow}"),
            goal.clone(),
            text("output")?,
        ),
        _ => return None,
    };
    if body.trim().is_empty() {
        return None;
    }
    let about = event["judged"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some(Document {
        id,
        kind,
        agent: text("agent"),
        about,
        approved: event["approved"].as_bool(),
        team: text("team"),
        // A workflow's context scope is its id (docs/context.md); an event may name another.
        scope: text("scope").unwrap_or_else(|| workflow.clone()),
        workflow,
        step: if kind == Kind::Task { None } else { step },
        brief,
        goal,
        text: body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(event: Value) -> Option<Document> {
        from_event(event.to_string().as_bytes())
    }

    #[test]
    fn finished_work_and_syntheses_are_remembered_with_their_instruction() {
        let d = doc(
            json!({"workflow": "w1", "kind": "step_finished", "step": "facts", "step_kind": "work",
            "agent": "researcher", "instruction": "Find the facts", "output": "Bikes cost 900 EUR",
            "goal": "Cost out a bike-share", "team": "research"}),
        )
        .unwrap();
        assert_eq!(d.id, "step_output:w1:facts");
        assert_eq!(d.kind, Kind::StepOutput);
        assert_eq!(d.agent.as_deref(), Some("researcher"));
        assert_eq!(d.brief, "Find the facts");
        assert_eq!(d.text, "Bikes cost 900 EUR");
        assert_eq!(d.scope, "w1");
        assert_eq!(d.team.as_deref(), Some("research"));
        for step_kind in ["plan", "review"] {
            let e = json!({"workflow": "w1", "kind": "step_finished", "step": "@plan", "step_kind": step_kind, "output": "{}"});
            assert_eq!(doc(e), None, "{step_kind}");
        }
    }

    #[test]
    fn reviews_are_remembered_about_the_judged_agents() {
        let d = doc(json!({"workflow": "w1", "kind": "reviewed", "step": "@review", "agent": "reviewer",
            "judged": ["researcher", "writer"], "approved": false, "feedback": "Add the maintenance costs.",
            "goal": "Cost out a bike-share", "team": null}))
        .unwrap();
        assert_eq!(d.id, "review:w1:@review");
        assert_eq!(d.about, ["researcher", "writer"]);
        assert_eq!(d.approved, Some(false));
        assert_eq!(d.brief, "Cost out a bike-share");
        assert_eq!(d.team, None);
        // An approval without a word teaches nothing.
        let silent =
            json!({"workflow": "w1", "kind": "reviewed", "step": "@review", "feedback": " "});
        assert_eq!(doc(silent), None);
    }

    #[test]
    fn completed_tasks_are_remembered_and_other_events_are_not() {
        let d = doc(
            json!({"workflow": "w1", "kind": "done", "status": "completed", "agent": "writer",
            "output": "The plan", "goal": "Cost out a bike-share"}),
        )
        .unwrap();
        assert_eq!(
            (d.id.as_str(), d.kind, d.step),
            ("task:w1", Kind::Task, None)
        );
        for e in [
            json!({"workflow": "w1", "kind": "done", "status": "failed", "detail": "boom"}),
            json!({"workflow": "w1", "kind": "step_started", "step": "facts", "detail": "researcher"}),
            json!({"kind": "done", "output": "no workflow"}),
            json!("not an object"),
        ] {
            assert_eq!(doc(e.clone()), None, "{e}");
        }
        assert_eq!(from_event(b"{not json"), None);
    }
}
