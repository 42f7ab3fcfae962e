//! `switchyard tasks list`: the gateway's task listing (`GET /v1/tasks`) as a plain table, one
//! line per task, newest first. No terminal codes, and every field from the gateway is
//! cleaned of control characters, so the table is the same on a terminal, in a pipe or a file.

use serde_json::Value;

/// Longest goal shown in the table; the gateway's preview may be longer.
const GOAL_COLUMN: usize = 60;

/// The table for a `GET /v1/tasks` answer, given the time now (Unix ms) for the ages.
pub fn render(list: &Value, now_ms: u64) -> String {
    let tasks = list["data"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = String::new();
    if tasks.is_empty() {
        out.push_str("no tasks\n");
    } else {
        let rows: Vec<[String; 7]> = tasks.iter().map(|t| row(t, now_ms)).collect();
        let header = ["ID", "STATUS", "STEPS", "TOKENS", "COST", "AGE", "GOAL"].map(String::from);
        let mut widths = [0usize; 7];
        for cells in std::iter::once(&header).chain(&rows) {
            for (width, cell) in widths.iter_mut().zip(cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for cells in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    line.push_str(cell);
                } else {
                    // Numbers line up on the right, words on the left.
                    let pad = " ".repeat(width - cell.chars().count());
                    if (2..=5).contains(&i) {
                        line.push_str(&pad);
                        line.push_str(cell);
                    } else {
                        line.push_str(cell);
                        line.push_str(&pad);
                    }
                    line.push_str("  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    if list["has_more"] == true {
        out.push_str("(more tasks than shown: raise --limit, or filter with --status)\n");
    }
    out
}

fn row(task: &Value, now_ms: u64) -> [String; 7] {
    let text = |v: &Value| clean(v.as_str().unwrap_or("-"));
    let mut status = text(&task["status"]);
    let error = &task["error"];
    if let Some(why) = error["guard"].as_str().or_else(|| error["class"].as_str()) {
        status = format!("{status} ({})", clean(why));
    }
    let steps = format!(
        "{}/{}",
        task["steps"]["done"].as_u64().unwrap_or(0),
        task["steps"]["total"].as_u64().unwrap_or(0)
    );
    let usage = &task["usage"];
    let tokens = usage["prompt_tokens"]
        .as_u64()
        .unwrap_or(0)
        .saturating_add(usage["completion_tokens"].as_u64().unwrap_or(0));
    let cost = usage["cost_usd"].as_f64().unwrap_or(0.0);
    // An unpriced model's tokens count as free: the cost is then at least what is shown.
    let cost = match (usage["cost_known"] != false, cost > 0.0) {
        (true, _) => format!("${cost:.4}"),
        (false, true) => format!("${cost:.4}+"),
        (false, false) => "-".to_owned(),
    };
    let age = task["created_ms"].as_u64().map_or_else(
        || "-".to_owned(),
        |created| age(now_ms.saturating_sub(created)),
    );
    let goal = text(&task["goal"]);
    let goal = if goal.chars().count() > GOAL_COLUMN {
        let cut: String = goal.chars().take(GOAL_COLUMN - 1).collect();
        format!("{}…", cut.trim_end())
    } else {
        goal
    };
    [
        text(&task["id"]),
        status,
        steps,
        tokens.to_string(),
        cost,
        age,
        goal,
    ]
}

/// A duration as its largest whole unit: `45s`, `12m`, `3h`, `2d`.
fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// `text` with control characters (escape sequences' lead-in, line breaks) made spaces.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tasks_are_lined_up_with_status_reasons_costs_and_ages() {
        let list = json!({"object": "list", "has_more": false, "data": [
            {"id": "019a-new", "status": "running", "goal": "Write a market analysis of electric bikes",
             "created_ms": 10_000_000 - 45_000, "steps": {"done": 2, "total": 6},
             "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "cost_usd": 0.0123, "cost_known": true}},
            {"id": "019a-old", "status": "failed", "goal": "Plan\u{1b}[2J a census",
             "created_ms": 10_000_000 - 7_200_000, "steps": {"done": 1, "total": 4},
             "usage": {"prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.0, "cost_known": false},
             "error": {"guard": "max_cost", "message": "over"}}
        ]});
        let table = render(&list, 10_000_000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("ID "), "{table}");
        assert!(lines[0].ends_with("GOAL"), "{table}");
        for (line, cells) in lines[1..].iter().zip([
            [
                "019a-new",
                "running",
                "2/6",
                "1500",
                "$0.0123",
                "45s",
                "Write a market",
            ],
            [
                "019a-old",
                "failed (max_cost)",
                "1/4",
                "15",
                "-",
                "2h",
                "Plan [2J a census",
            ],
        ]) {
            let mut at = 0;
            for cell in cells {
                let found = line[at..]
                    .find(cell)
                    .unwrap_or_else(|| panic!("{cell:?} in {line:?}"));
                at += found + cell.len();
            }
        }
        // Columns line up: every row's status starts where the header's does.
        let column = lines[0].find("STATUS").unwrap();
        assert_eq!(lines[1].find("running"), Some(column));
        assert_eq!(lines[2].find("failed"), Some(column));
        assert!(!table.contains('\u{1b}'), "{table:?}");
    }

    #[test]
    fn an_empty_or_partial_listing_says_so() {
        assert_eq!(
            render(&json!({"object": "list", "data": [], "has_more": false}), 0),
            "no tasks\n"
        );
        let more = render(&json!({"object": "list", "data": [], "has_more": true}), 0);
        assert!(more.contains("raise --limit"), "{more}");
    }

    #[test]
    fn long_goals_are_cut_and_ages_use_their_largest_unit() {
        let goal = "word ".repeat(30);
        let list =
            json!({"data": [{"id": "x", "status": "queued", "goal": goal, "created_ms": 0}]});
        let line = render(&list, 3 * 86_400_000)
            .lines()
            .nth(1)
            .unwrap()
            .to_owned();
        assert!(line.ends_with('…'), "{line}");
        assert!(line.contains("3d"), "{line}");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(60_000), "1m");
        assert_eq!(age(3_600_000), "1h");
    }
}
