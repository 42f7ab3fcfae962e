//! The state machine's transitions, one behaviour per test, with an environment whose agents
//! and clock are fixed.

use super::*;
use crate::routing::Scored;

struct World {
    now: u64,
    /// (agent, capability) pairs.
    agents: Vec<(&'static str, &'static str)>,
}

impl World {
    fn new() -> Self {
        Self {
            now: 1_000,
            agents: vec![
                ("planner", PLANNING),
                ("researcher", "research"),
                ("analyst", "analysis"),
                ("writer", WRITING),
                ("reviewer", REVIEW),
            ],
        }
    }
}

impl Env for World {
    fn now_ms(&self) -> u64 {
        self.now
    }
    fn route(&self, capability: &str, allowed: Option<&[String]>) -> Option<Decision> {
        let (agent, _) = self.agents.iter().find(|(a, c)| {
            *c == capability && allowed.is_none_or(|list| list.iter().any(|x| x == a))
        })?;
        Some(Decision {
            agent: (*agent).to_owned(),
            candidates: vec![Scored {
                agent: (*agent).to_owned(),
                capability: 1.0,
                load: 1.0,
                performance: 0.5,
                total: 0.9,
            }],
        })
    }
    fn known_capability(&self, capability: &str, allowed: Option<&[String]>) -> bool {
        self.agents.iter().any(|(a, c)| {
            *c == capability && allowed.is_none_or(|list| list.iter().any(|x| x == a))
        })
    }
    fn known_agent(&self, agent: &str) -> bool {
        self.agents.iter().any(|(a, _)| *a == agent)
    }
    fn limits(&self) -> Limits {
        Limits::default()
    }
}

fn spec(goal: &str) -> Spec {
    Spec {
        goal: goal.into(),
        team: None,
        agents: None,
        capabilities: None,
        steps: None,
        context: None,
        priority: Priority::Normal,
        budget: Budget::default(),
        approval: false,
        on_conflict: ConflictPolicy::default(),
    }
}

fn workflow(spec: Spec) -> Workflow {
    Workflow::new(TaskId::new(), spec, 1_000, 600_000)
}

fn dispatched(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch { step } => Some(step.clone()),
            Effect::Abort { .. } | Effect::Progress(_) => None,
        })
        .collect()
}

fn done(step: &str, text: &str) -> Event {
    Event::StepFinished {
        step: step.into(),
        attempt: 0,
        write: None,
        outcome: StepOutcome::Completed {
            text: text.into(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                cost_usd: 0.001,
                cost_known: true,
            },
            tool_calls: Vec::new(),
            artifact: None,
        },
        prompt: None,
    }
}

fn failed(step: &str, class: &str) -> Event {
    Event::StepFinished {
        step: step.into(),
        attempt: 0,
        write: None,
        outcome: StepOutcome::Failed {
            class: class.into(),
            message: "it broke".into(),
            tool_calls: Vec::new(),
        },
        prompt: None,
    }
}

const PLAN: &str = r#"{"steps": [
    {"id": "facts", "capability": "research", "instruction": "Find facts", "depends_on": []},
    {"id": "market", "capability": "research", "instruction": "Size the market", "depends_on": []},
    {"id": "analysis", "capability": "analysis", "instruction": "Analyse", "depends_on": ["facts", "market"]}
]}"#;

/// Runs the planned workflow to its review; returns the workflow.
fn through_review(world: &World, approval: bool) -> Workflow {
    let mut wf = workflow(Spec {
        approval,
        ..spec("Analyse e-bikes")
    });
    advance(&mut wf, &Event::Start, world);
    advance(&mut wf, &done("@plan", PLAN), world);
    advance(&mut wf, &done("facts", "f"), world);
    advance(&mut wf, &done("market", "m"), world);
    advance(&mut wf, &done("analysis", "a"), world);
    advance(&mut wf, &done("@synthesis", "the report"), world);
    wf
}

#[test]
fn a_goal_is_planned_then_independent_steps_run_together_then_dependents() {
    let world = World::new();
    let mut wf = workflow(spec("Analyse e-bikes"));
    assert_eq!(
        dispatched(&advance(&mut wf, &Event::Start, &world)),
        ["@plan"]
    );
    assert_eq!(wf.status, Status::Planning);
    assert_eq!(wf.step("@plan").unwrap().agent.as_deref(), Some("planner"));
    assert_eq!(
        dispatched(&advance(&mut wf, &done("@plan", PLAN), &world)),
        ["facts", "market"]
    );
    assert_eq!(wf.status, Status::Running);
    assert!(dispatched(&advance(&mut wf, &done("facts", "f"), &world)).is_empty());
    assert_eq!(
        dispatched(&advance(&mut wf, &done("market", "m"), &world)),
        ["analysis"]
    );
    assert_eq!(
        dispatched(&advance(&mut wf, &done("analysis", "a"), &world)),
        ["@synthesis"]
    );
    let synthesis = wf.step("@synthesis").unwrap();
    assert_eq!(synthesis.depends_on, ["facts", "market", "analysis"]);
    assert_eq!(synthesis.agent.as_deref(), Some("writer"));
    assert_eq!(
        dispatched(&advance(&mut wf, &done("@synthesis", "report"), &world)),
        ["@review"]
    );
    advance(
        &mut wf,
        &done("@review", r#"{"verdict": "approve", "score": 0.9}"#),
        &world,
    );
    assert_eq!(wf.status, Status::Completed);
    assert_eq!(wf.output.as_deref(), Some("report"));
    assert_eq!(wf.usage.tokens(), 15 * 6);
    // Every step's task id is derived from the workflow's, so any replica computes it.
    assert_eq!(wf.step("facts").unwrap().task_id, wf.id.child("facts"));
}

#[test]
fn an_event_applied_twice_changes_nothing_and_repeats_its_dispatches() {
    let world = World::new();
    let mut wf = workflow(spec("g"));
    advance(&mut wf, &Event::Start, &world);
    // Start again (the first one's publish was lost): the planner step is published again,
    // which JetStream de-duplicates.
    assert_eq!(
        dispatched(&advance(&mut wf, &Event::Start, &world)),
        ["@plan"]
    );
    let first = advance(&mut wf, &done("@plan", PLAN), &world);
    let after_first = wf.clone();
    let again = advance(&mut wf, &done("@plan", PLAN), &world);
    assert_eq!(wf, after_first);
    assert_eq!(dispatched(&again), dispatched(&first));
    // Once the plan is done, a late Start dispatches nothing.
    assert!(dispatched(&advance(&mut wf, &Event::Start, &world)).is_empty());
}

#[test]
fn an_invalid_plan_is_retried_once_with_its_problems_then_fails_by_name() {
    let world = World::new();
    let mut wf = workflow(spec("g"));
    advance(&mut wf, &Event::Start, &world);
    let bad = r#"{"steps": [{"id": "a", "capability": "astrology", "instruction": "x", "depends_on": []}]}"#;
    assert_eq!(
        dispatched(&advance(&mut wf, &done("@plan", bad), &world)),
        ["@plan-2"]
    );
    assert!(
        wf.step("@plan-2")
            .unwrap()
            .instruction
            .contains("astrology")
    );
    advance(&mut wf, &done("@plan-2", "I cannot plan this."), &world);
    assert_eq!(wf.status, Status::Failed);
    let error = wf.error.unwrap();
    assert_eq!(error.guard, Some(Guard::InvalidPlan));
    assert!(error.message.contains("no JSON"), "{}", error.message);
}

#[test]
fn a_revision_is_asked_once_then_the_guard_fails_the_run() {
    let world = World::new();
    let mut wf = through_review(&world, false);
    let revise = r#"{"verdict": "revise", "feedback": "cite sources"}"#;
    assert_eq!(
        dispatched(&advance(&mut wf, &done("@review", revise), &world)),
        ["@synthesis-2"]
    );
    assert!(
        wf.step("@synthesis-2")
            .unwrap()
            .instruction
            .contains("cite sources")
    );
    assert_eq!(
        dispatched(&advance(&mut wf, &done("@synthesis-2", "v2"), &world)),
        ["@review-2"]
    );
    advance(&mut wf, &done("@review-2", revise), &world);
    assert_eq!(wf.status, Status::Failed);
    assert_eq!(wf.error.unwrap().guard, Some(Guard::MaxRevisions));
    assert_eq!(wf.output.as_deref(), Some("v2"));
}

#[test]
fn approval_pauses_until_approved_or_rejected() {
    let world = World::new();
    let mut wf = through_review(&world, true);
    advance(&mut wf, &done("@review", "APPROVE: good"), &world);
    assert_eq!(wf.status, Status::AwaitingApproval);
    let mut rejected = wf.clone();
    advance(&mut wf, &Event::Approve, &world);
    assert_eq!(wf.status, Status::Completed);
    advance(
        &mut rejected,
        &Event::Reject {
            reason: "off topic".into(),
        },
        &world,
    );
    assert_eq!(rejected.error.unwrap().guard, Some(Guard::Rejected));
}

#[test]
fn cancel_aborts_running_steps_and_dispatches_nothing_more() {
    let world = World::new();
    let mut wf = workflow(spec("g"));
    advance(&mut wf, &Event::Start, &world);
    advance(&mut wf, &done("@plan", PLAN), &world);
    let effects = advance(&mut wf, &Event::Cancel, &world);
    let aborted: Vec<TaskId> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Abort { task_id } => Some(*task_id),
            Effect::Dispatch { .. } | Effect::Progress(_) => None,
        })
        .collect();
    assert_eq!(aborted, [wf.id.child("facts"), wf.id.child("market")]);
    assert_eq!(wf.status, Status::Cancelled);
    // A step that finishes afterwards starts nothing.
    assert!(dispatched(&advance(&mut wf, &done("facts", "f"), &world)).is_empty());
    assert_eq!(wf.status, Status::Cancelled);
}

#[test]
fn a_failed_step_fails_the_workflow_with_its_class() {
    let world = World::new();
    let mut wf = workflow(spec("g"));
    advance(&mut wf, &Event::Start, &world);
    advance(&mut wf, &done("@plan", PLAN), &world);
    advance(&mut wf, &failed("market", "rate_limited"), &world);
    let error = wf.error.clone().unwrap();
    assert_eq!(
        (error.class.as_deref(), error.step.as_deref()),
        (Some("rate_limited"), Some("market"))
    );
    assert_eq!(wf.step("facts").unwrap().status, StepStatus::Cancelled);
}

#[test]
fn budgets_stop_a_runaway_run_with_the_guard_named() {
    let world = World::new();
    let mut wf = workflow(Spec {
        budget: Budget {
            max_tokens: Some(20),
            ..Budget::default()
        },
        ..spec("g")
    });
    advance(&mut wf, &Event::Start, &world);
    advance(&mut wf, &done("@plan", PLAN), &world);
    advance(&mut wf, &done("facts", "f"), &world);
    assert_eq!(wf.error.clone().unwrap().guard, Some(Guard::MaxTokens));

    // Each step costs $0.001 (`done`): the plan stays under $0.0015, its first step does not.
    let mut cost = workflow(Spec {
        budget: Budget {
            max_cost_usd: Some(0.0015),
            ..Budget::default()
        },
        ..spec("g")
    });
    advance(&mut cost, &Event::Start, &world);
    advance(&mut cost, &done("@plan", PLAN), &world);
    assert_eq!(cost.status, Status::Running);
    let effects = advance(&mut cost, &done("facts", "f"), &world);
    assert_eq!(cost.status, Status::Failed);
    let error = cost.error.clone().unwrap();
    assert_eq!(error.guard, Some(Guard::MaxCost));
    assert_eq!(error.message, "$0.0020 spent; the budget is $0.0015");
    assert!((cost.usage.cost_usd - 0.002).abs() < 1e-12);
    // The step still running is stopped, and nothing more is dispatched.
    assert_eq!(cost.step("market").unwrap().status, StepStatus::Cancelled);
    assert!(effects.contains(&Effect::Abort {
        task_id: cost.step("market").unwrap().task_id
    }));
    assert!(dispatched(&effects).is_empty());

    let mut steps = workflow(Spec {
        budget: Budget {
            max_steps: Some(2),
            ..Budget::default()
        },
        ..spec("g")
    });
    advance(&mut steps, &Event::Start, &world);
    advance(&mut steps, &done("@plan", PLAN), &world);
    assert_eq!(steps.error.clone().unwrap().guard, Some(Guard::MaxSteps));

    let mut late = workflow(spec("g"));
    advance(&mut late, &Event::Start, &world);
    let later = World {
        now: late.deadline_ms + 1,
        ..World::new()
    };
    advance(&mut late, &done("@plan", PLAN), &later);
    assert_eq!(late.error.unwrap().guard, Some(Guard::WallTime));
}

#[test]
fn capabilities_run_the_best_agent_for_each_on_the_goal_in_parallel() {
    let world = World::new();
    let mut wf = workflow(Spec {
        capabilities: Some(vec!["research".into(), "analysis".into()]),
        ..spec("Should we expand to Spain?")
    });
    assert_eq!(
        dispatched(&advance(&mut wf, &Event::Start, &world)),
        ["research", "analysis"]
    );
    assert_eq!(
        wf.step("analysis").unwrap().instruction,
        "Should we expand to Spain?"
    );
}

#[test]
fn a_team_without_a_reviewer_borrows_one_but_work_stays_in_the_team() {
    let world = World::new();
    let mut wf = workflow(Spec {
        agents: Some(vec!["researcher".into(), "writer".into()]),
        steps: Some(vec![PlanStep {
            id: "dig".into(),
            capability: "research".into(),
            instruction: "dig".into(),
            depends_on: vec![],
            agent: None,
            writes: None,
        }]),
        ..spec("g")
    });
    advance(&mut wf, &Event::Start, &world);
    advance(&mut wf, &done("dig", "d"), &world);
    advance(&mut wf, &done("@synthesis", "s"), &world);
    assert_eq!(
        wf.step("@review").unwrap().agent.as_deref(),
        Some("reviewer")
    );
    let mut outside = workflow(Spec {
        agents: Some(vec!["writer".into()]),
        capabilities: Some(vec!["research".into()]),
        ..spec("g")
    });
    advance(&mut outside, &Event::Start, &world);
    assert_eq!(outside.error.unwrap().guard, Some(Guard::NoAgent));
}

#[test]
fn verdicts_are_read_leniently_but_never_approve_by_accident() {
    assert!(parse_verdict(r#"{"verdict":"approve","score":0.8}"#).approved);
    assert!(parse_verdict("APPROVE - fine").approved);
    assert!(!parse_verdict("Looks good to me").approved);
    let v = parse_verdict("```json\n{\"verdict\": \"revise\", \"feedback\": \"more data\"}\n```");
    assert!(!v.approved);
    assert_eq!(v.feedback, "more data");
}

#[test]
fn budgets_that_are_not_positive_are_named() {
    let b = Budget {
        max_tokens: Some(0),
        max_cost_usd: Some(-1.0),
        max_steps: Some(0),
        max_wall_ms: Some(0),
    };
    let fields: Vec<String> = b.problems().into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "budget.max_tokens",
            "budget.max_cost_usd",
            "budget.max_steps",
            "budget.max_wall_ms"
        ]
    );
}

#[test]
fn a_plan_may_only_use_what_the_team_can_do() {
    let world = World::new();
    let mut wf = workflow(Spec {
        agents: Some(vec!["researcher".into(), "writer".into()]),
        ..spec("g")
    });
    advance(&mut wf, &Event::Start, &world);
    // "analysis" exists, but nobody in this team has it: the plan is asked for again.
    assert_eq!(
        dispatched(&advance(&mut wf, &done("@plan", PLAN), &world)),
        ["@plan-2"]
    );
    assert!(wf.step("@plan-2").unwrap().instruction.contains("analysis"));
}

#[test]
fn usage_sums_steps_costs_and_remembers_an_unpriced_one() {
    let price = Price {
        input_per_mtok: 2.0,
        output_per_mtok: 10.0,
    };
    let priced = Usage::priced(1_000, 200, Some(price));
    assert!((priced.cost_usd - (0.002 + 0.002)).abs() < 1e-12);
    assert!(priced.cost_known);
    let unpriced = Usage::priced(1_000, 200, None);
    assert_eq!(unpriced.cost_usd, 0.0);
    assert!(!unpriced.cost_known);

    let world = World::new();
    let mut wf = workflow(spec("g"));
    assert!(wf.usage.cost_known, "nothing spent is a known cost");
    advance(&mut wf, &Event::Start, &world);
    let finished = |step: &str, text: &str, usage: Usage| Event::StepFinished {
        step: step.into(),
        attempt: 0,
        write: None,
        outcome: StepOutcome::Completed {
            text: text.into(),
            usage,
            tool_calls: Vec::new(),
            artifact: None,
        },
        prompt: None,
    };
    advance(&mut wf, &finished("@plan", PLAN, priced), &world);
    advance(&mut wf, &finished("facts", "f", priced), &world);
    assert!((wf.usage.cost_usd - 0.008).abs() < 1e-12);
    assert_eq!(wf.usage.tokens(), 2_400);
    assert!(wf.usage.cost_known);
    advance(&mut wf, &finished("market", "m", unpriced), &world);
    assert!((wf.usage.cost_usd - 0.008).abs() < 1e-12);
    assert_eq!(wf.usage.tokens(), 3_600);
    assert!(
        !wf.usage.cost_known,
        "a step without a price makes the sum a lower bound"
    );
    assert!(wf.step("facts").unwrap().usage.cost_known);
    assert!(!wf.step("market").unwrap().usage.cost_known);

    // A state stored before costs were known to be unknown reads as known.
    let old: Usage =
        serde_json::from_str(r#"{"prompt_tokens": 1, "completion_tokens": 2, "cost_usd": 0.0}"#)
            .unwrap();
    assert!(old.cost_known);
}

#[test]
fn statuses_are_written_as_serde_writes_them() {
    for status in Status::ALL {
        assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
    }
}

#[test]
fn a_step_whose_named_agent_was_removed_fails_the_run_instead_of_waiting() {
    let step = |id: &str, capability: &str, agent: &str, deps: &[&str]| PlanStep {
        id: id.into(),
        capability: capability.into(),
        instruction: format!("do {id}"),
        depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
        agent: Some(agent.into()),
        writes: None,
    };
    let mut world = World::new();
    let mut wf = workflow(Spec {
        steps: Some(vec![
            step("facts", "research", "researcher", &[]),
            step("report", "analysis", "analyst", &["facts"]),
        ]),
        ..spec("Analyse e-bikes")
    });
    let effects = advance(&mut wf, &Event::Start, &world);
    assert_eq!(dispatched(&effects), ["facts"]);
    world.agents.retain(|(a, _)| *a != "analyst");
    let effects = advance(&mut wf, &done("facts", "f"), &world);
    assert!(dispatched(&effects).is_empty());
    assert_eq!(wf.status, Status::Failed);
    let error = wf.error.as_ref().unwrap();
    assert_eq!(error.guard, Some(Guard::NoAgent));
    assert!(
        error.message.contains("`analyst` was removed"),
        "{}",
        error.message
    );
}

/// Two parallel steps that write one context key, then one that needs both.
fn contended(policy: ConflictPolicy) -> Workflow {
    let step = |id: &str, deps: &[&str]| PlanStep {
        id: id.into(),
        capability: "research".into(),
        instruction: format!("do {id}"),
        depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
        agent: None,
        writes: (deps.is_empty()).then(|| "findings".to_owned()),
    };
    workflow(Spec {
        steps: Some(vec![step("a", &[]), step("b", &[]), step("c", &["a", "b"])]),
        on_conflict: policy,
        ..spec("g")
    })
}

fn wrote(step: &str, attempt: u32, write: WriteOutcome) -> Event {
    let Event::StepFinished { outcome, .. } = done(step, &format!("{step} output")) else {
        unreachable!()
    };
    Event::StepFinished {
        step: step.into(),
        attempt,
        outcome,
        write: Some(write),
        prompt: None,
    }
}

fn stored(revision: u64) -> WriteOutcome {
    WriteOutcome::Written {
        key: "findings".into(),
        revision,
    }
}

fn lost(base: u64, current: u64) -> WriteOutcome {
    WriteOutcome::Conflict {
        key: "findings".into(),
        base,
        current,
        by: Some("researcher".into()),
    }
}

#[test]
fn a_lost_write_reruns_the_step_on_the_winners_revision_and_records_it() {
    let world = World::new();
    let mut wf = contended(ConflictPolicy::Rerun);
    advance(&mut wf, &Event::Start, &world);
    assert_eq!(wf.step("a").unwrap().writes.as_deref(), Some("findings"));
    assert_eq!(
        wf.step("c").unwrap().writes.as_deref(),
        Some("c"),
        "the default key is the id"
    );
    advance(&mut wf, &wrote("a", 0, stored(1)), &world);
    let first_b = wf.step("b").unwrap().task_id;
    let effects = advance(&mut wf, &wrote("b", 0, lost(0, 1)), &world);
    // b runs again under a new task id; c still waits for it.
    assert_eq!(dispatched(&effects), ["b"]);
    let b = wf.step("b").unwrap();
    assert_eq!((b.attempt, b.status), (1, StepStatus::Dispatched));
    assert_ne!(b.task_id, first_b);
    assert_eq!(b.task_id, StepRef::task_id_of(wf.id, "b", 1));
    assert_eq!(
        b.output, None,
        "the losing answer is not kept as the step's output"
    );
    assert_eq!(wf.conflicts.len(), 1);
    let c = &wf.conflicts[0];
    assert_eq!(
        (
            c.key.as_str(),
            c.step.as_str(),
            c.base_revision,
            c.current_revision
        ),
        ("findings", "b", 0, 1)
    );
    assert_eq!(
        (c.policy, c.resolved_by.as_str(), c.resolved_revision),
        (ConflictPolicy::Rerun, "b", None)
    );
    // The first run's event again changes nothing, and re-yields the re-run.
    let again = advance(&mut wf, &wrote("b", 0, lost(0, 1)), &world);
    assert_eq!(dispatched(&again), ["b"]);
    assert_eq!(wf.conflicts.len(), 1);
    // The re-run writes on top: the conflict is settled at that revision, c goes.
    let effects = advance(&mut wf, &wrote("b", 1, stored(2)), &world);
    assert_eq!(dispatched(&effects), ["c"]);
    assert_eq!(wf.conflicts[0].resolved_revision, Some(2));
    assert_eq!(wf.step("b").unwrap().written, Some(2));
    // Both runs' tokens count.
    assert_eq!(wf.step("b").unwrap().usage.tokens(), 30);
}

#[test]
fn a_lost_write_under_the_merge_policy_gets_a_reviewer_merge_before_dependents() {
    let world = World::new();
    let mut wf = contended(ConflictPolicy::Merge);
    advance(&mut wf, &Event::Start, &world);
    advance(&mut wf, &wrote("a", 0, stored(1)), &world);
    let effects = advance(&mut wf, &wrote("b", 0, lost(0, 1)), &world);
    assert_eq!(dispatched(&effects), ["@merge-b"]);
    let merge = wf.step("@merge-b").unwrap();
    assert_eq!(merge.capability, REVIEW);
    assert_eq!(merge.writes.as_deref(), Some("findings"));
    assert_eq!(merge.depends_on, ["b"]);
    assert_eq!(wf.step("b").unwrap().output.as_deref(), Some("b output"));
    assert!(
        wf.step("c")
            .unwrap()
            .depends_on
            .contains(&"@merge-b".to_owned())
    );
    assert_eq!(wf.conflicts[0].resolved_by, "@merge-b");
    let effects = advance(&mut wf, &wrote("@merge-b", 0, stored(2)), &world);
    assert_eq!(dispatched(&effects), ["c"]);
    assert_eq!(wf.conflicts[0].resolved_revision, Some(2));
}

#[test]
fn a_key_fought_over_past_the_rerun_bound_fails_with_the_guard() {
    let world = World::new();
    let mut wf = contended(ConflictPolicy::Rerun);
    advance(&mut wf, &Event::Start, &world);
    advance(&mut wf, &wrote("a", 0, stored(1)), &world);
    for attempt in 0..MAX_RERUNS {
        advance(
            &mut wf,
            &wrote("b", attempt, lost(attempt as u64, attempt as u64 + 1)),
            &world,
        );
        assert_eq!(wf.status, Status::Running);
    }
    advance(&mut wf, &wrote("b", MAX_RERUNS, lost(5, 6)), &world);
    assert_eq!(wf.status, Status::Failed);
    assert_eq!(wf.error.as_ref().unwrap().guard, Some(Guard::Conflicts));
}

#[test]
fn an_output_stored_as_an_artifact_keeps_a_preview_and_the_reference() {
    let world = World::new();
    let mut wf = workflow(spec("g"));
    advance(&mut wf, &Event::Start, &world);
    advance(&mut wf, &done("@plan", PLAN), &world);
    let long = "é".repeat(shared::artifacts::PREVIEW_BYTES);
    let reference = shared::artifacts::ArtifactRef {
        id: "step-x".into(),
        bytes: long.len() as u64,
        sha256: shared::artifacts::sha256_hex(long.as_bytes()),
        content_type: shared::artifacts::TEXT_CONTENT_TYPE.into(),
    };
    let big = |step: &str| Event::StepFinished {
        step: step.into(),
        attempt: 0,
        write: None,
        prompt: None,
        outcome: StepOutcome::Completed {
            text: long.clone(),
            usage: Usage::default(),
            tool_calls: Vec::new(),
            artifact: Some(reference.clone()),
        },
    };
    let first = wf
        .steps
        .iter()
        .find(|s| s.kind == StepKind::Work)
        .unwrap()
        .id
        .clone();
    advance(&mut wf, &big(&first), &world);
    let step = wf.step(&first).unwrap();
    assert_eq!(step.status, StepStatus::Completed);
    assert_eq!(step.artifact.as_ref(), Some(&reference));
    let kept = step.output.clone().unwrap();
    assert!(long.starts_with(&kept) && kept.len() <= shared::artifacts::PREVIEW_BYTES);
    assert!(kept.len() < long.len());
    // The rest of the work, then a synthesis too large to keep: the workflow's output is
    // its preview and reference.
    let rest: Vec<String> = wf
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Work && s.status != StepStatus::Completed)
        .map(|s| s.id.clone())
        .collect();
    for id in rest {
        advance(&mut wf, &done(&id, "small"), &world);
    }
    let synthesis = wf
        .steps
        .iter()
        .find(|s| s.kind == StepKind::Synthesize)
        .unwrap()
        .id
        .clone();
    advance(&mut wf, &big(&synthesis), &world);
    assert_eq!(wf.output_artifact.as_ref(), Some(&reference));
    assert_eq!(wf.output, Some(kept));
}
