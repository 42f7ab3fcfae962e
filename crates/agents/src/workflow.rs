//! The workflow state machine: goal → plan → steps (parallel where independent) → synthesis
//! → review (bounded revisions) → optional approval → done. [`advance`] is pure and total:
//! it applies one event to the state and says what must happen next ([`Effect`]s); the
//! edges (NATS) store the state with compare-and-set and carry the effects out.
//!
//! Exactly once, with any process dying at any moment, rests on three facts: the state
//! changes only by compare-and-set; every step is a task with a deterministic id
//! (`workflow id` → [`TaskId::child`]), so publishing it again within JetStream's
//! duplicate window is a no-op; and an event applied twice (a redelivery after a crash
//! between the state write and the effects) changes nothing but yields again the effects it
//! yielded the first time, so the crashed work is redone, de-duplicated.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::artifacts::{ArtifactRef, PREVIEW_BYTES, preview};
use shared::config::Price;
use shared::tokens::PromptRecord;
use shared::tools::ToolCall;
use shared::{Priority, StepRef, TaskId};

use crate::plan::{self, Plan, PlanLimits, PlanStep};
use crate::routing::Decision;
use shared::agents::FieldError;

/// What the planner step needs.
pub const PLANNING: &str = "task_decomposition";
/// What the synthesis step needs.
pub const WRITING: &str = "writing";
/// What the review step needs.
pub const REVIEW: &str = "review";
/// Ids of the steps the workflow adds itself start with this, which plan step ids (tokens)
/// cannot, so the two never collide.
const OWN_STEP: char = '@';

/// Runs after the first that a step gets when its write to the shared context loses a
/// conflict: two re-runs on fresh revisions settle an honest race; more means the key is
/// fought over, and the workflow stops with the guard named.
pub const MAX_RERUNS: u32 = 2;
/// Conflicts one workflow may record before it stops: each costs a model call.
pub const MAX_CONFLICTS: usize = 8;
/// Ids of merge steps (a reviewer merging two versions of one context key) start with this.
const MERGE_STEP: &str = "@merge-";

/// A workflow's wall time when its budget sets none: a dozen model calls in sequence with
/// retries fit; a run stuck for longer is stopped with the guard named.
pub const DEFAULT_WALL_MS: u64 = 30 * 60 * 1000;

/// A workflow's state, as stored (JSON) in the `workflows` bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    pub id: TaskId,
    pub spec: Spec,
    pub status: Status,
    pub steps: Vec<Step>,
    /// Plans asked for so far (the first, then one retry with the problems fed back).
    pub plan_attempts: u32,
    /// Syntheses after the first (each one a reviewer's "revise").
    pub revisions: u32,
    pub usage: Usage,
    /// The deliverable, once synthesized (its preview when it is an artifact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The whole deliverable, when it was too large to keep inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_artifact: Option<ArtifactRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    /// Writes to the shared context that lost a compare-and-set, and how each was settled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
    pub created_ms: u64,
    pub deadline_ms: u64,
    pub updated_ms: u64,
}

/// What the caller asked for (`POST /v1/tasks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub goal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Only these agents may run its steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    /// Run the best agent for each of these on the goal, in parallel, then synthesize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// The plan, when the caller gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<PlanStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub budget: Budget,
    /// Pause for a person's approval before completing.
    #[serde(default)]
    pub approval: bool,
    /// How a step's write to the shared context that lost a conflict is settled.
    #[serde(default)]
    pub on_conflict: ConflictPolicy,
}

/// How a conflict on a shared-context key is settled; never by keeping the last write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// First writer wins: the losing step runs again, seeing the winner's revision, and
    /// writes on top of it.
    #[default]
    Rerun,
    /// A reviewer-type agent merges the two versions into the next revision.
    Merge,
}

/// One lost compare-and-set on a shared-context key, as recorded on the workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub key: String,
    /// The step whose write lost, and which run of it.
    pub step: String,
    pub attempt: u32,
    /// The revision the step had read (0: none), and the one it found instead.
    pub base_revision: u64,
    pub current_revision: u64,
    /// Who wrote the revision it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_by: Option<String>,
    pub policy: ConflictPolicy,
    /// The step that settles it: the same step's next run, or the merge step.
    pub resolved_by: String,
    /// The revision the settling step wrote, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_revision: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Planning,
    Running,
    AwaitingApproval,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    /// Every status, in the order a workflow passes through them.
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Planning,
        Status::Running,
        Status::AwaitingApproval,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The status as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Planning => "planning",
            Status::Running => "running",
            Status::AwaitingApproval => "awaiting_approval",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        match self {
            Status::Completed | Status::Failed | Status::Cancelled => true,
            Status::Queued | Status::Planning | Status::Running | Status::AwaitingApproval => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Plan,
    Work,
    Synthesize,
    Review,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Dispatched,
    Completed,
    Failed,
    Cancelled,
}

/// One step: a task on the durable path once dispatched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    pub kind: StepKind,
    pub capability: String,
    pub instruction: String,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// The agent that runs it (named by the plan, or chosen at dispatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Why that agent: every candidate's score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Decision>,
    pub status: StepStatus,
    pub task_id: TaskId,
    /// The event that dispatched it, so that event applied again dispatches it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_by: Option<String>,
    /// Its output, or the output's first [`PREVIEW_BYTES`] when the whole is in `artifact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Where the whole output is, when it was longer than `artifacts.inline_max_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub usage: Usage,
    /// The built-in tool calls its task made (its tool loop), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The key of the workflow's shared context its answer is written to (work steps:
    /// the plan's `writes`, else the step's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<String>,
    /// Which run this is (see [`StepRef::attempt`]); `task_id` is this run's.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The context revision its answer was written at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<u64>,
    /// What its prompt was built from and how it was fitted to the window (`budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptRecord>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Limits a caller sets on one workflow; each is a guard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wall_ms: Option<u64>,
}

impl Budget {
    /// Every budget that is not positive.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let not_positive =
            |field: &str| FieldError::new(format!("budget.{field}"), "must be positive");
        if self.max_tokens == Some(0) {
            errors.push(not_positive("max_tokens"));
        }
        if self.max_cost_usd.is_some_and(|c| c.is_nan() || c <= 0.0) {
            errors.push(not_positive("max_cost_usd"));
        }
        if self.max_steps == Some(0) {
            errors.push(not_positive("max_steps"));
        }
        if self.max_wall_ms == Some(0) {
            errors.push(not_positive("max_wall_ms"));
        }
        errors
    }
}

/// Tokens used and what they cost: a step's (its one answer), or a workflow's (its steps'
/// summed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// USD, at the price of the model that answered each step.
    pub cost_usd: f64,
    /// Whether `cost_usd` is the whole cost: false once a step was answered by a model
    /// without a configured price, whose tokens then count as free.
    #[serde(default = "known")]
    pub cost_known: bool,
}

fn known() -> bool {
    true
}

impl Default for Usage {
    /// Nothing used: a cost of 0, known.
    fn default() -> Self {
        Self {
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: 0.0,
            cost_known: true,
        }
    }
}

impl Usage {
    /// One answer's usage, costed at `price` (the answering model's, when it has one).
    pub fn priced(prompt_tokens: u64, completion_tokens: u64, price: Option<Price>) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            cost_usd: price.map_or(0.0, |p| p.cost(prompt_tokens, completion_tokens)),
            cost_known: price.is_some(),
        }
    }

    fn add(&mut self, other: Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.cost_usd += other.cost_usd;
        self.cost_known &= other.cost_known;
    }

    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// A guard that stopped a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    MaxTokens,
    MaxCost,
    MaxSteps,
    WallTime,
    MaxRevisions,
    InvalidPlan,
    NoAgent,
    Rejected,
    /// A shared-context key stayed contended past [`MAX_RERUNS`] or [`MAX_CONFLICTS`].
    Conflicts,
}

/// Why a workflow failed: a guard, or a step's failure class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    /// The failure class of the step that failed it (`rate_limited`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub message: String,
}

/// A reviewer's judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub approved: bool,
    /// In `[0, 1]`, when the reviewer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default)]
    pub feedback: String,
}

/// What happens to a workflow.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one event per message, applied and dropped; boxing a step's end saves nothing"
)]
pub enum Event {
    Start,
    StepFinished {
        step: String,
        /// Which run of the step finished ([`StepRef::attempt`]).
        attempt: u32,
        outcome: StepOutcome,
        /// What became of its write to the shared context, when it made one.
        write: Option<WriteOutcome>,
        /// How the step's prompt was fitted to its window, as its task carried it.
        prompt: Option<PromptRecord>,
    },
    Approve,
    Reject {
        reason: String,
    },
    Cancel,
}

impl Event {
    /// A name for the event, recorded on the steps it dispatches.
    fn key(&self) -> String {
        match self {
            Event::Start => "start".to_owned(),
            Event::StepFinished {
                step, attempt: 0, ..
            } => format!("after:{step}"),
            Event::StepFinished { step, attempt, .. } => format!("after:{step}~{attempt}"),
            Event::Approve => "approve".to_owned(),
            Event::Reject { .. } => "reject".to_owned(),
            Event::Cancel => "cancel".to_owned(),
        }
    }
}

/// How a step's task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    Completed {
        /// The whole output (a plan or a verdict is read from it).
        text: String,
        usage: Usage,
        tool_calls: Vec<ToolCall>,
        /// Where the edge stored `text` when it is too large to keep inline: the step then
        /// keeps a preview and this reference.
        artifact: Option<ArtifactRef>,
    },
    Failed {
        class: String,
        message: String,
        tool_calls: Vec<ToolCall>,
    },
}

/// What became of a step's compare-and-set write of its answer to the shared context.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Stored as `revision` (or found stored by this same run, after a crash).
    Written { key: String, revision: u64 },
    /// Another writer got there first: the key was at `current` (0: deleted), not `base`.
    Conflict {
        key: String,
        base: u64,
        current: u64,
        by: Option<String>,
    },
}

/// What the edges must do after a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish the step's task (its id is the step's `task_id`; publishing twice is a no-op).
    Dispatch { step: String },
    /// The step's work is no longer wanted: stop it (`cancel.<task id>`).
    Abort { task_id: TaskId },
    /// Tell the watchers (`GET /v1/tasks/{id}/events`).
    Progress(Progress),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub kind: ProgressKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    Planned,
    StepStarted,
    StepFinished,
    StepFailed,
    Synthesized,
    Reviewed,
    ApprovalNeeded,
    /// A step's write to the shared context lost a conflict; the detail says how it is settled.
    Conflict,
    Done,
}

impl Progress {
    fn effect(kind: ProgressKind, step: Option<&str>, detail: Option<String>) -> Effect {
        Effect::Progress(Progress {
            kind,
            step: step.map(str::to_owned),
            detail,
        })
    }
}

/// Limits the deployment sets on every workflow.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub plan: PlanLimits,
    /// Syntheses after a reviewer's "revise".
    pub max_revisions: u32,
    /// Plans asked for before the workflow fails (the first one plus retries).
    pub max_plan_attempts: u32,
}

impl Default for Limits {
    /// One revision and one plan retry: enough to fix a slip, not enough to loop.
    fn default() -> Self {
        Self {
            plan: PlanLimits::default(),
            max_revisions: 1,
            max_plan_attempts: 2,
        }
    }
}

/// What a transition needs from the world, injected so [`advance`] stays pure.
pub trait Env {
    fn now_ms(&self) -> u64;
    /// The agent for a step needing `capability`, among `allowed` (all when `None`).
    fn route(&self, capability: &str, allowed: Option<&[String]>) -> Option<Decision>;
    /// Whether an agent among `allowed` (all when `None`) has `capability`.
    fn known_capability(&self, capability: &str, allowed: Option<&[String]>) -> bool;
    fn known_agent(&self, agent: &str) -> bool;
    fn limits(&self) -> Limits;
}

impl Workflow {
    /// A new workflow for `spec`, not started yet.
    pub fn new(id: TaskId, spec: Spec, now_ms: u64, default_wall_ms: u64) -> Self {
        let wall = spec.budget.max_wall_ms.unwrap_or(default_wall_ms);
        Self {
            id,
            spec,
            status: Status::Queued,
            steps: Vec::new(),
            plan_attempts: 0,
            revisions: 0,
            usage: Usage::default(),
            output: None,
            output_artifact: None,
            review: None,
            error: None,
            conflicts: Vec::new(),
            created_ms: now_ms,
            deadline_ms: now_ms.saturating_add(wall),
            updated_ms: now_ms,
        }
    }

    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    fn step_mut(&mut self, id: &str) -> Option<&mut Step> {
        self.steps.iter_mut().find(|s| s.id == id)
    }

    /// The agents steps may go to: the spec's list, else its team's (resolved by the edge
    /// into `agents` at reception), else all.
    fn allowed(&self) -> Option<&[String]> {
        self.spec.agents.as_deref()
    }

    fn add_step(
        &mut self,
        id: String,
        kind: StepKind,
        capability: &str,
        instruction: String,
        depends_on: Vec<String>,
        agent: Option<String>,
    ) {
        let task_id = self.id.child(&id);
        let writes = (kind == StepKind::Work).then(|| id.clone());
        self.steps.push(Step {
            id,
            kind,
            capability: capability.to_owned(),
            instruction,
            depends_on,
            agent,
            routing: None,
            status: StepStatus::Pending,
            task_id,
            dispatched_by: None,
            output: None,
            artifact: None,
            error: None,
            usage: Usage::default(),
            tool_calls: Vec::new(),
            writes,
            attempt: 0,
            written: None,
            prompt: None,
        });
    }

    fn fail(&mut self, failure: Failure, effects: &mut Vec<Effect>) {
        self.status = Status::Failed;
        let detail = failure.message.clone();
        self.error = Some(failure);
        self.abort_running(effects);
        effects.push(Progress::effect(ProgressKind::Done, None, Some(detail)));
    }

    fn abort_running(&mut self, effects: &mut Vec<Effect>) {
        for step in &mut self.steps {
            match step.status {
                StepStatus::Dispatched => {
                    step.status = StepStatus::Cancelled;
                    effects.push(Effect::Abort {
                        task_id: step.task_id,
                    });
                }
                StepStatus::Pending => step.status = StepStatus::Cancelled,
                StepStatus::Completed | StepStatus::Failed | StepStatus::Cancelled => {}
            }
        }
    }
}

fn guard(guard: Guard, message: String) -> Failure {
    Failure {
        guard: Some(guard),
        class: None,
        step: None,
        message,
    }
}

/// Applies `event` to `wf` and returns what must happen next. Applying an event that was
/// applied already changes nothing and returns the dispatches it made then.
pub fn advance(wf: &mut Workflow, event: &Event, env: &dyn Env) -> Vec<Effect> {
    let mut effects = Vec::new();
    let key = event.key();
    if let Some(replayed) = replay(wf, event, &key) {
        return replayed;
    }
    let now = env.now_ms();
    wf.updated_ms = now;
    match event {
        Event::Start => start(wf, env, &mut effects),
        Event::StepFinished {
            step,
            outcome,
            write,
            prompt,
            ..
        } => finished(
            wf,
            step,
            outcome,
            write.as_ref(),
            prompt.as_ref(),
            env,
            &mut effects,
        ),
        Event::Approve => {
            wf.status = Status::Completed;
            effects.push(Progress::effect(
                ProgressKind::Done,
                None,
                Some("approved".into()),
            ));
        }
        Event::Reject { reason } => wf.fail(
            guard(Guard::Rejected, format!("rejected: {reason}")),
            &mut effects,
        ),
        Event::Cancel => {
            wf.status = Status::Cancelled;
            wf.abort_running(&mut effects);
            effects.push(Progress::effect(
                ProgressKind::Done,
                None,
                Some("cancelled".into()),
            ));
        }
    }
    if !wf.status.is_terminal() && wf.status != Status::AwaitingApproval {
        check_budget(wf, now, &mut effects);
    }
    if !wf.status.is_terminal() && wf.status != Status::AwaitingApproval {
        dispatch_ready(wf, &key, env, &mut effects);
    }
    effects
}

/// `Some` when `event` does not apply to `wf` as it is (already applied, or too late):
/// then the effects of its first application that may not have been carried out.
fn replay(wf: &Workflow, event: &Event, key: &str) -> Option<Vec<Effect>> {
    let applies = match event {
        Event::Start => wf.status == Status::Queued,
        Event::StepFinished { step, attempt, .. } => {
            !wf.status.is_terminal()
                && wf
                    .step(step)
                    .is_some_and(|s| s.status == StepStatus::Dispatched && s.attempt == *attempt)
        }
        Event::Approve | Event::Reject { .. } => wf.status == Status::AwaitingApproval,
        Event::Cancel => !wf.status.is_terminal(),
    };
    if applies {
        return None;
    }
    let mut effects: Vec<Effect> = wf
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Dispatched && s.dispatched_by.as_deref() == Some(key))
        .map(|s| Effect::Dispatch { step: s.id.clone() })
        .collect();
    if wf.status.is_terminal() {
        effects.extend(
            wf.steps
                .iter()
                .filter(|s| s.status == StepStatus::Cancelled)
                .map(|s| Effect::Abort { task_id: s.task_id }),
        );
        effects.push(Progress::effect(
            ProgressKind::Done,
            None,
            Some(wf.status.as_str().into()),
        ));
    }
    Some(effects)
}

fn start(wf: &mut Workflow, env: &dyn Env, effects: &mut Vec<Effect>) {
    if let Some(steps) = wf.spec.steps.clone() {
        add_plan(wf, steps);
        wf.status = Status::Running;
        effects.push(Progress::effect(
            ProgressKind::Planned,
            None,
            Some("the caller's plan".into()),
        ));
    } else if let Some(capabilities) = wf.spec.capabilities.clone() {
        // The orchestrate pattern: the best agent for each capability, all on the goal.
        let goal = wf.spec.goal.clone();
        for capability in capabilities {
            wf.add_step(
                capability.clone(),
                StepKind::Work,
                &capability,
                goal.clone(),
                Vec::new(),
                None,
            );
        }
        wf.status = Status::Running;
        effects.push(Progress::effect(
            ProgressKind::Planned,
            None,
            Some("one step per capability".into()),
        ));
    } else {
        ask_for_plan(wf, None, env);
        wf.status = Status::Planning;
    }
}

/// Adds a planner step; `problems` are the last plan's, fed back.
fn ask_for_plan(wf: &mut Workflow, problems: Option<String>, env: &dyn Env) {
    wf.plan_attempts += 1;
    let id = if wf.plan_attempts == 1 {
        format!("{OWN_STEP}plan")
    } else {
        format!("{OWN_STEP}plan-{}", wf.plan_attempts)
    };
    let limits = env.limits().plan;
    let mut instruction = format!(
        "Decompose the goal into at most {} steps for the agents available. Answer with JSON only, following the schema.",
        limits.max_steps
    );
    if let Some(problems) = problems {
        instruction.push_str(&format!(
            "\nYour previous plan was refused: {problems}. Fix these problems."
        ));
    }
    wf.add_step(id, StepKind::Plan, PLANNING, instruction, Vec::new(), None);
}

fn add_plan(wf: &mut Workflow, steps: Vec<PlanStep>) {
    for step in steps {
        let writes = step.writes;
        wf.add_step(
            step.id,
            StepKind::Work,
            &step.capability,
            step.instruction,
            step.depends_on,
            step.agent,
        );
        if let Some(key) = writes
            && let Some(added) = wf.steps.last_mut()
        {
            added.writes = Some(key);
        }
    }
}

fn finished(
    wf: &mut Workflow,
    id: &str,
    outcome: &StepOutcome,
    write: Option<&WriteOutcome>,
    prompt: Option<&PromptRecord>,
    env: &dyn Env,
    effects: &mut Vec<Effect>,
) {
    match (outcome, write) {
        (
            StepOutcome::Completed { .. },
            Some(WriteOutcome::Conflict {
                key,
                base,
                current,
                by,
            }),
        ) => {
            let conflict = Conflict {
                key: key.clone(),
                step: id.to_owned(),
                attempt: wf.step(id).map_or(0, |s| s.attempt),
                base_revision: *base,
                current_revision: *current,
                current_by: by.clone(),
                policy: wf.spec.on_conflict,
                resolved_by: String::new(),
                resolved_revision: None,
            };
            return conflicted(wf, conflict, outcome, effects);
        }
        (_, Some(WriteOutcome::Written { revision, .. })) => written(wf, id, *revision),
        _ => {}
    }
    let Some(step) = wf.step_mut(id) else {
        return;
    };
    step.prompt = prompt.cloned();
    let kind = step.kind;
    let text = match outcome {
        StepOutcome::Completed {
            text,
            usage,
            tool_calls,
            artifact,
        } => {
            step.status = StepStatus::Completed;
            step.tool_calls.clone_from(tool_calls);
            step.output = Some(match artifact {
                Some(_) => preview(text, PREVIEW_BYTES).to_owned(),
                None => text.clone(),
            });
            step.artifact.clone_from(artifact);
            // Added, not set: a re-run's step keeps the tokens of the run that lost.
            step.usage.add(*usage);
            wf.usage.add(*usage);
            text.clone()
        }
        StepOutcome::Failed {
            class,
            message,
            tool_calls,
        } => {
            step.status = StepStatus::Failed;
            step.tool_calls.clone_from(tool_calls);
            step.error = Some(format!("{class}: {message}"));
            effects.push(Progress::effect(
                ProgressKind::StepFailed,
                Some(id),
                Some(format!("{class}: {message}")),
            ));
            let guard = (class == "deadline_exceeded").then_some(Guard::WallTime);
            wf.fail(
                Failure {
                    guard,
                    class: Some(class.clone()),
                    step: Some(id.to_owned()),
                    message: format!("step `{id}` failed ({class}): {message}"),
                },
                effects,
            );
            return;
        }
    };
    effects.push(Progress::effect(ProgressKind::StepFinished, Some(id), None));
    match kind {
        StepKind::Plan => planned(wf, &text, env, effects),
        StepKind::Work => {
            let work_done = wf
                .steps
                .iter()
                .filter(|s| s.kind == StepKind::Work)
                .all(|s| s.status == StepStatus::Completed);
            if work_done {
                add_synthesis(wf, None);
            }
        }
        StepKind::Synthesize => {
            wf.output = wf.step(id).and_then(|s| s.output.clone());
            wf.output_artifact = wf.step(id).and_then(|s| s.artifact.clone());
            effects.push(Progress::effect(ProgressKind::Synthesized, Some(id), None));
            let round = wf.revisions;
            let synthesis = id.to_owned();
            let review_id = if round == 0 {
                format!("{OWN_STEP}review")
            } else {
                format!("{OWN_STEP}review-{}", round + 1)
            };
            let goal = wf.spec.goal.clone();
            wf.add_step(
                review_id,
                StepKind::Review,
                REVIEW,
                format!("Review the deliverable for the goal: {goal}\nApprove it, or ask for a revision with concrete feedback."),
                vec![synthesis],
                None,
            );
        }
        StepKind::Review => reviewed(wf, id, &text, env, effects),
    }
}

/// Records `revision` as the step's write, and as the settling of a conflict it resolves.
fn written(wf: &mut Workflow, id: &str, revision: u64) {
    if let Some(step) = wf.step_mut(id) {
        step.written = Some(revision);
    }
    for conflict in &mut wf.conflicts {
        if conflict.resolved_by == id && conflict.resolved_revision.is_none() {
            conflict.resolved_revision = Some(revision);
        }
    }
}

/// A step answered, but its write to the shared context lost: records the conflict and
/// settles it by the workflow's policy (a merge step's own conflict is always re-run).
/// The losing answer's tokens count: they were spent.
fn conflicted(
    wf: &mut Workflow,
    mut conflict: Conflict,
    outcome: &StepOutcome,
    effects: &mut Vec<Effect>,
) {
    let StepOutcome::Completed {
        text,
        usage,
        tool_calls,
        artifact,
    } = outcome
    else {
        return;
    };
    let id = conflict.step.clone();
    wf.usage.add(*usage);
    let merge_step = id.starts_with(MERGE_STEP);
    if merge_step {
        conflict.policy = ConflictPolicy::Rerun;
    }
    let exhausted = if wf.conflicts.len() >= MAX_CONFLICTS {
        Some(format!("{MAX_CONFLICTS} conflicts on the shared context"))
    } else if conflict.policy == ConflictPolicy::Rerun && conflict.attempt >= MAX_RERUNS {
        Some(format!(
            "step `{id}` lost the write to `{}` {} times",
            conflict.key,
            conflict.attempt + 1
        ))
    } else {
        None
    };
    if let Some(message) = exhausted {
        wf.fail(guard(Guard::Conflicts, message), effects);
        return;
    }
    let detail = match conflict.policy {
        ConflictPolicy::Rerun => {
            conflict.resolved_by.clone_from(&id);
            format!(
                "`{}` was at revision {}, not {}: step `{id}` runs again on it",
                conflict.key, conflict.current_revision, conflict.base_revision
            )
        }
        ConflictPolicy::Merge => {
            conflict.resolved_by = format!("{MERGE_STEP}{id}");
            format!(
                "`{}` was at revision {}, not {}: `{}` merges the two versions",
                conflict.key,
                conflict.current_revision,
                conflict.base_revision,
                conflict.resolved_by
            )
        }
    };
    let wf_id = wf.id;
    let Some(step) = wf.step_mut(&id) else {
        return;
    };
    step.usage.add(*usage);
    step.tool_calls.clone_from(tool_calls);
    match conflict.policy {
        ConflictPolicy::Rerun => {
            step.attempt += 1;
            step.task_id = StepRef::task_id_of(wf_id, &id, step.attempt);
            step.status = StepStatus::Pending;
            step.dispatched_by = None;
        }
        ConflictPolicy::Merge => {
            step.status = StepStatus::Completed;
            step.output = Some(match artifact {
                Some(_) => preview(text, PREVIEW_BYTES).to_owned(),
                None => text.clone(),
            });
            step.artifact.clone_from(artifact);
            let (key, merge) = (conflict.key.clone(), conflict.resolved_by.clone());
            for dependent in &mut wf.steps {
                if dependent.depends_on.contains(&id) {
                    dependent.depends_on.push(merge.clone());
                }
            }
            wf.add_step(
                merge.clone(),
                StepKind::Work,
                REVIEW,
                format!(
                    "Two agents wrote the shared-context entry `{key}` at the same time. The current \
                     entry is one version; the output of step `{id}` is the other. Merge them into \
                     one version that keeps what is right in each and settles where they disagree; \
                     answer with the merged version only."
                ),
                vec![id.clone()],
                None,
            );
            if let Some(added) = wf.step_mut(&merge) {
                added.writes = Some(key);
            }
        }
    }
    effects.push(Progress::effect(
        ProgressKind::Conflict,
        Some(&id),
        Some(detail),
    ));
    wf.conflicts.push(conflict);
}

fn planned(wf: &mut Workflow, text: &str, env: &dyn Env, effects: &mut Vec<Effect>) {
    let allowed = wf.allowed().map(<[String]>::to_vec);
    let checked = plan::parse(text).and_then(|plan: Plan| {
        plan.check(
            |c| env.known_capability(c, allowed.as_deref()),
            |a| env.known_agent(a),
            env.limits().plan,
        )
        .map(|_| plan)
        .map_err(|errors| {
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    });
    match checked {
        Ok(plan) => {
            let count = plan.steps.len();
            add_plan(wf, plan.steps);
            wf.status = Status::Running;
            effects.push(Progress::effect(
                ProgressKind::Planned,
                None,
                Some(format!("{count} steps")),
            ));
        }
        Err(problems) if wf.plan_attempts < env.limits().max_plan_attempts => {
            ask_for_plan(wf, Some(problems), env);
        }
        Err(problems) => wf.fail(
            guard(
                Guard::InvalidPlan,
                format!(
                    "the planner's plan was invalid {} times: {problems}",
                    wf.plan_attempts
                ),
            ),
            effects,
        ),
    }
}

fn add_synthesis(wf: &mut Workflow, feedback: Option<&str>) {
    let inputs: Vec<String> = wf
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Work)
        .map(|s| s.id.clone())
        .collect();
    let (id, mut depends_on) = if wf.revisions == 0 {
        (format!("{OWN_STEP}synthesis"), inputs)
    } else {
        (format!("{OWN_STEP}synthesis-{}", wf.revisions + 1), inputs)
    };
    let mut instruction = format!(
        "Combine the steps' outputs into one deliverable for the goal: {}",
        wf.spec.goal
    );
    if let Some(feedback) = feedback {
        instruction.push_str(&format!("\nThe reviewer asked for a revision: {feedback}"));
        if let Some(last) = wf
            .steps
            .iter()
            .rev()
            .find(|s| s.kind == StepKind::Synthesize)
        {
            depends_on.push(last.id.clone());
        }
    }
    wf.add_step(
        id,
        StepKind::Synthesize,
        WRITING,
        instruction,
        depends_on,
        None,
    );
}

fn reviewed(wf: &mut Workflow, id: &str, text: &str, env: &dyn Env, effects: &mut Vec<Effect>) {
    let verdict = parse_verdict(text);
    effects.push(Progress::effect(
        ProgressKind::Reviewed,
        Some(id),
        Some(if verdict.approved {
            "approved".into()
        } else {
            format!("revise: {}", verdict.feedback)
        }),
    ));
    let approved = verdict.approved;
    let feedback = verdict.feedback.clone();
    wf.review = Some(verdict);
    if approved {
        if wf.spec.approval {
            wf.status = Status::AwaitingApproval;
            effects.push(Progress::effect(ProgressKind::ApprovalNeeded, None, None));
        } else {
            wf.status = Status::Completed;
            effects.push(Progress::effect(
                ProgressKind::Done,
                None,
                Some("completed".into()),
            ));
        }
    } else if wf.revisions < env.limits().max_revisions {
        wf.revisions += 1;
        add_synthesis(wf, Some(&feedback));
    } else {
        wf.fail(
            guard(
                Guard::MaxRevisions,
                format!(
                    "the reviewer still asked for a revision after {} revisions: {feedback}",
                    wf.revisions
                ),
            ),
            effects,
        );
    }
}

/// A reviewer's answer: JSON `{"verdict": "approve"|"revise", "score", "feedback"}`, or
/// text that starts with APPROVE or REVISE. Anything else is a revision request quoting it,
/// so an unclear review never passes as an approval.
pub fn parse_verdict(text: &str) -> Verdict {
    let json = text
        .find('{')
        .zip(text.rfind('}'))
        .and_then(|(a, b)| text.get(a..=b));
    if let Some(v) = json.and_then(|j| serde_json::from_str::<Value>(j).ok()) {
        let word = v["verdict"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if word == "approve" || word == "revise" {
            return Verdict {
                approved: word == "approve",
                score: v["score"].as_f64().map(|s| s.clamp(0.0, 1.0)),
                feedback: v["feedback"].as_str().unwrap_or_default().to_owned(),
            };
        }
    }
    let trimmed = text.trim_start();
    let upper = trimmed.get(..7).unwrap_or(trimmed).to_ascii_uppercase();
    Verdict {
        approved: upper.starts_with("APPROVE"),
        score: None,
        feedback: trimmed.to_owned(),
    }
}

fn check_budget(wf: &mut Workflow, now: u64, effects: &mut Vec<Effect>) {
    let budget = wf.spec.budget;
    let exceeded = if budget.max_tokens.is_some_and(|m| wf.usage.tokens() > m) {
        Some((
            Guard::MaxTokens,
            format!(
                "{} tokens used; the budget is {}",
                wf.usage.tokens(),
                budget.max_tokens.unwrap_or(0)
            ),
        ))
    } else if budget.max_cost_usd.is_some_and(|m| wf.usage.cost_usd > m) {
        Some((
            Guard::MaxCost,
            format!(
                "${:.4} spent; the budget is ${:.4}",
                wf.usage.cost_usd,
                budget.max_cost_usd.unwrap_or(0.0)
            ),
        ))
    } else if now > wf.deadline_ms {
        Some((
            Guard::WallTime,
            "the workflow ran past its wall-time budget".to_owned(),
        ))
    } else {
        None
    };
    if let Some((g, message)) = exceeded {
        wf.fail(guard(g, message), effects);
    }
}

fn dispatch_ready(wf: &mut Workflow, key: &str, env: &dyn Env, effects: &mut Vec<Effect>) {
    let done: Vec<String> = wf
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Completed)
        .map(|s| s.id.clone())
        .collect();
    let ready: Vec<usize> = wf
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.status == StepStatus::Pending && s.depends_on.iter().all(|d| done.contains(d))
        })
        .map(|(i, _)| i)
        .collect();
    let started = wf
        .steps
        .iter()
        .filter(|s| s.status != StepStatus::Pending)
        .count();
    if let Some(max) = wf.spec.budget.max_steps
        && started + ready.len() > usize::try_from(max).unwrap_or(usize::MAX)
    {
        wf.fail(
            guard(
                Guard::MaxSteps,
                format!("the workflow needs more than its budget of {max} steps"),
            ),
            effects,
        );
        return;
    }
    let allowed = wf.allowed().map(<[String]>::to_vec);
    for i in ready {
        let step = &wf.steps[i];
        let decision = match &step.agent {
            Some(agent) if !env.known_agent(agent) => {
                let message = format!("agent `{agent}` was removed before its step could run");
                wf.fail(guard(Guard::NoAgent, message), effects);
                return;
            }
            Some(agent) => Some(Decision {
                agent: agent.clone(),
                candidates: Vec::new(),
            }),
            None => env
                .route(&step.capability, allowed.as_deref())
                // The team may lack a planner, writer or reviewer: the workflow's own steps
                // fall back to every agent.
                .or_else(|| {
                    (step.kind != StepKind::Work)
                        .then(|| env.route(&step.capability, None))
                        .flatten()
                }),
        };
        let Some(decision) = decision else {
            let capability = step.capability.clone();
            wf.fail(
                guard(
                    Guard::NoAgent,
                    format!("no agent has the capability `{capability}`"),
                ),
                effects,
            );
            return;
        };
        let step = &mut wf.steps[i];
        step.agent = Some(decision.agent.clone());
        step.routing = Some(decision);
        step.status = StepStatus::Dispatched;
        step.dispatched_by = Some(key.to_owned());
        effects.push(Effect::Dispatch {
            step: step.id.clone(),
        });
        effects.push(Progress::effect(
            ProgressKind::StepStarted,
            Some(&step.id),
            step.agent.clone(),
        ));
    }
}

#[cfg(test)]
mod tests;
