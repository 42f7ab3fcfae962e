//! The `calculator` tool: a small recursive-descent evaluator of arithmetic expressions over
//! `f64` — numbers, `+ - * / %`, `^` (or `**`, right-associative, binding tighter than a
//! leading minus: `-2^2` is -4), parentheses, a fixed set of functions and the constants `pi`
//! and `e`. Nothing else: no variables, no assignment, no strings, nothing that reaches
//! outside the expression. Input is bounded in length and nesting, and every error says
//! what is wrong and where.
//!
//! Why our own parser: `evalexpr` is a small scripting language (assignment, strings, `;`
//! chains, integer arithmetic that errors on overflow, functions under `math::` names models
//! do not write), more surface than a calculator needs; `meval` has not been released since
//! 2017. A calculator is about 300 lines we control completely.

use serde_json::{Map, Value, json};
use shared::tools::{ToolError, ToolErrorClass};

/// Longest expression accepted: a calculation, not a program.
pub const MAX_EXPRESSION_LEN: usize = 1024;
/// Deepest nesting of parentheses, signs, powers and calls: far beyond any real formula,
/// far below the stack.
pub const MAX_DEPTH: usize = 64;
/// Most arguments of one call (`min`, `max`).
const MAX_ARGS: usize = 64;

/// Why an expression has no value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CalcError {
    pub message: String,
}

fn err<T>(message: impl Into<String>) -> Result<T, CalcError> {
    Err(CalcError {
        message: message.into(),
    })
}

/// The tool: `{"expression": "…"}` in, `{"expression", "result"}` out.
pub fn call(arguments: &Value) -> Result<Value, ToolError> {
    let invalid = |m: String| ToolError::new(ToolErrorClass::InvalidArguments, m);
    let Some(fields) = arguments.as_object() else {
        return Err(invalid(
            "arguments must be a JSON object with `expression`".into(),
        ));
    };
    if let Some(other) = fields.keys().find(|k| *k != "expression") {
        return Err(invalid(format!(
            "unknown field `{other}`: the calculator takes only `expression`"
        )));
    }
    let expression = match fields.get("expression") {
        Some(Value::String(e)) => e,
        Some(_) => return Err(invalid("`expression` must be a string".into())),
        None => return Err(invalid("missing field `expression`".into())),
    };
    let value = evaluate(expression).map_err(|e| invalid(e.message))?;
    let mut out = Map::new();
    out.insert("expression".into(), json!(expression.trim()));
    out.insert("result".into(), number(value));
    Ok(Value::Object(out))
}

/// A JSON number for `value`: an integer when it is one exactly (so `6 * 7` is `42`, not
/// `42.0`).
fn number(value: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.fract() == 0.0 && value.abs() < EXACT {
        // An integral value below 2^53 converts exactly.
        return json!(value as i64);
    }
    json!(value)
}

/// The value of `expression`.
pub fn evaluate(expression: &str) -> Result<f64, CalcError> {
    if expression.len() > MAX_EXPRESSION_LEN {
        return err(format!(
            "the expression is longer than {MAX_EXPRESSION_LEN} characters"
        ));
    }
    let tokens = lex(expression)?;
    if tokens.is_empty() {
        return err("the expression is empty");
    }
    let mut parser = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    let value = parser.expr()?;
    if let Some(token) = parser.peek() {
        return err(format!(
            "unexpected {} at position {}",
            token.kind.describe(),
            token.at + 1
        ));
    }
    finite(value, "the result")
}

fn finite(value: f64, what: &str) -> Result<f64, CalcError> {
    if value.is_finite() {
        Ok(value)
    } else if value.is_nan() {
        err(format!("{what} is undefined"))
    } else {
        err(format!("{what} is too large"))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Number(f64),
    Name(String),
    Op(char),
    Open,
    Close,
    Comma,
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::Number(n) => format!("number {n}"),
            Kind::Name(n) => format!("`{n}`"),
            Kind::Op(c) => format!("`{c}`"),
            Kind::Open => "`(`".to_owned(),
            Kind::Close => "`)`".to_owned(),
            Kind::Comma => "`,`".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    kind: Kind,
    /// Character position in the expression (0-based).
    at: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, CalcError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = i;
        let kind = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '0'..='9' | '.' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                // An exponent: `1e3`, `2.5E-4`.
                if i < chars.len() && matches!(chars[i], 'e' | 'E') {
                    let mut j = i + 1;
                    if j < chars.len() && matches!(chars[j], '+' | '-') {
                        j += 1;
                    }
                    if j < chars.len() && chars[j].is_ascii_digit() {
                        while j < chars.len() && chars[j].is_ascii_digit() {
                            j += 1;
                        }
                        i = j;
                    }
                }
                let literal: String = chars[start..i].iter().collect();
                match literal.parse::<f64>() {
                    Ok(n) => Kind::Number(n),
                    Err(_) => {
                        return err(format!(
                            "`{literal}` at position {} is not a number",
                            start + 1
                        ));
                    }
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                Kind::Name(chars[start..i].iter().collect::<String>().to_lowercase())
            }
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                Kind::Op('^')
            }
            '+' | '-' | '*' | '/' | '%' | '^' => {
                i += 1;
                Kind::Op(c)
            }
            '×' => {
                i += 1;
                Kind::Op('*')
            }
            '÷' => {
                i += 1;
                Kind::Op('/')
            }
            '(' => {
                i += 1;
                Kind::Open
            }
            ')' => {
                i += 1;
                Kind::Close
            }
            ',' => {
                i += 1;
                Kind::Comma
            }
            other => {
                return err(format!(
                    "unexpected character `{other}` at position {}",
                    at + 1
                ));
            }
        };
        tokens.push(Token { kind, at });
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn next_is_op(&self, ops: &[char]) -> Option<char> {
        match self.peek() {
            Some(Token {
                kind: Kind::Op(c), ..
            }) if ops.contains(c) => Some(*c),
            _ => None,
        }
    }

    fn descend(&mut self) -> Result<(), CalcError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(format!(
                "the expression nests deeper than {MAX_DEPTH} levels"
            ));
        }
        Ok(())
    }

    /// `expr := term (('+' | '-') term)*`
    fn expr(&mut self) -> Result<f64, CalcError> {
        self.descend()?;
        let mut value = self.term()?;
        while let Some(op) = self.next_is_op(&['+', '-']) {
            self.pos += 1;
            let rhs = self.term()?;
            value = if op == '+' { value + rhs } else { value - rhs };
        }
        self.depth -= 1;
        Ok(value)
    }

    /// `term := unary (('*' | '/' | '%') unary)*`
    fn term(&mut self) -> Result<f64, CalcError> {
        let mut value = self.unary()?;
        while let Some(op) = self.next_is_op(&['*', '/', '%']) {
            let at = self.peek().map_or(0, |t| t.at);
            self.pos += 1;
            let rhs = self.unary()?;
            value = match op {
                '*' => value * rhs,
                _ if rhs == 0.0 => {
                    return err(format!("division by zero at position {}", at + 1));
                }
                '/' => value / rhs,
                _ => value % rhs,
            };
        }
        Ok(value)
    }

    /// `unary := ('-' | '+') unary | power`
    fn unary(&mut self) -> Result<f64, CalcError> {
        if let Some(op) = self.next_is_op(&['-', '+']) {
            self.pos += 1;
            self.descend()?;
            let value = self.unary()?;
            self.depth -= 1;
            return Ok(if op == '-' { -value } else { value });
        }
        self.power()
    }

    /// `power := primary ('^' unary)?` — right-associative, and `2^-1` is allowed.
    fn power(&mut self) -> Result<f64, CalcError> {
        let base = self.primary()?;
        if self.next_is_op(&['^']).is_some() {
            self.pos += 1;
            self.descend()?;
            let exponent = self.unary()?;
            self.depth -= 1;
            return finite(base.powf(exponent), &format!("{base} ^ {exponent}"));
        }
        Ok(base)
    }

    /// `primary := number | constant | name '(' args ')' | '(' expr ')'`
    fn primary(&mut self) -> Result<f64, CalcError> {
        let Some(token) = self.next() else {
            return err("the expression ends too early");
        };
        match token.kind {
            Kind::Number(n) => Ok(n),
            Kind::Open => {
                let value = self.expr()?;
                self.expect_close(token.at)?;
                Ok(value)
            }
            Kind::Name(name) => {
                if matches!(self.peek(), Some(t) if t.kind == Kind::Open) {
                    self.pos += 1;
                    let args = self.args(token.at)?;
                    apply(&name, &args)
                } else {
                    constant(&name)
                }
            }
            other => err(format!(
                "unexpected {} at position {}",
                other.describe(),
                token.at + 1
            )),
        }
    }

    fn expect_close(&mut self, open_at: usize) -> Result<(), CalcError> {
        match self.next() {
            Some(Token {
                kind: Kind::Close, ..
            }) => Ok(()),
            Some(t) => err(format!(
                "expected `)` at position {} (to close the `(` at position {}), found {}",
                t.at + 1,
                open_at + 1,
                t.kind.describe()
            )),
            None => err(format!(
                "the `(` at position {} is never closed",
                open_at + 1
            )),
        }
    }

    /// Arguments of a call, after its `(`.
    fn args(&mut self, name_at: usize) -> Result<Vec<f64>, CalcError> {
        let mut args = Vec::new();
        if matches!(self.peek(), Some(t) if t.kind == Kind::Close) {
            self.pos += 1;
            return Ok(args);
        }
        loop {
            args.push(self.expr()?);
            if args.len() > MAX_ARGS {
                return err(format!("a call takes at most {MAX_ARGS} arguments"));
            }
            match self.next() {
                Some(Token {
                    kind: Kind::Comma, ..
                }) => {}
                Some(Token {
                    kind: Kind::Close, ..
                }) => return Ok(args),
                Some(t) => {
                    return err(format!(
                        "expected `,` or `)` at position {}, found {}",
                        t.at + 1,
                        t.kind.describe()
                    ));
                }
                None => {
                    return err(format!(
                        "the call at position {} is never closed",
                        name_at + 1
                    ));
                }
            }
        }
    }
}

/// Functions a model may call, for error messages.
const FUNCTIONS: &str = "sqrt, abs, exp, ln, log, log10, log2, sin, cos, tan, asin, acos, atan, floor, ceil, round, min, max, pow";

fn constant(name: &str) -> Result<f64, CalcError> {
    match name {
        "pi" => Ok(std::f64::consts::PI),
        "e" => Ok(std::f64::consts::E),
        other => err(format!(
            "unknown name `{other}`: only the constants pi and e, and the functions {FUNCTIONS} (called with parentheses), are known"
        )),
    }
}

fn apply(name: &str, args: &[f64]) -> Result<f64, CalcError> {
    let one = |f: fn(f64) -> f64| -> Result<f64, CalcError> {
        match args {
            [x] => finite(f(*x), &format!("{name}({x})")),
            _ => err(format!("`{name}` takes 1 argument, {} given", args.len())),
        }
    };
    match name {
        "sqrt" => one(f64::sqrt),
        "abs" => one(f64::abs),
        "exp" => one(f64::exp),
        "ln" => one(f64::ln),
        "log10" => one(f64::log10),
        "log2" => one(f64::log2),
        "sin" => one(f64::sin),
        "cos" => one(f64::cos),
        "tan" => one(f64::tan),
        "asin" => one(f64::asin),
        "acos" => one(f64::acos),
        "atan" => one(f64::atan),
        "floor" => one(f64::floor),
        "ceil" => one(f64::ceil),
        "round" => one(f64::round),
        "log" => match args {
            [x] => finite(x.log10(), &format!("log({x})")),
            [x, base] => finite(x.log(*base), &format!("log({x}, {base})")),
            _ => err(format!(
                "`log` takes 1 or 2 arguments (value, base), {} given",
                args.len()
            )),
        },
        "pow" => match args {
            [x, y] => finite(x.powf(*y), &format!("pow({x}, {y})")),
            _ => err(format!("`pow` takes 2 arguments, {} given", args.len())),
        },
        "min" | "max" => {
            let Some(first) = args.first() else {
                return err(format!("`{name}` takes at least 1 argument"));
            };
            Ok(args.iter().skip(1).fold(*first, |acc, x| {
                if name == "min" {
                    acc.min(*x)
                } else {
                    acc.max(*x)
                }
            }))
        }
        other => err(format!("unknown function `{other}`; known: {FUNCTIONS}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(e: &str) -> f64 {
        evaluate(e).unwrap_or_else(|err| panic!("{e}: {err}"))
    }

    fn fails(e: &str) -> String {
        evaluate(e).unwrap_err().message
    }

    #[test]
    fn arithmetic_and_precedence() {
        for (expr, want) in [
            ("1 + 2 * 3", 7.0),
            ("(1 + 2) * 3", 9.0),
            ("10 - 4 - 3", 3.0),
            ("100 / 10 / 5", 2.0),
            ("7 % 4", 3.0),
            ("2 ^ 3 ^ 2", 512.0),
            ("2 ** 10", 1024.0),
            ("-2 ^ 2", -4.0),
            ("(-2) ^ 2", 4.0),
            ("2 ^ -1", 0.5),
            ("--3", 3.0),
            ("+4 - -4", 8.0),
            ("1.5e3 + .5", 1500.5),
            ("2.5E-1", 0.25),
            ("6 × 7 ÷ 2", 21.0),
            ("((((1))))", 1.0),
            ("(1200 - 950) / 950 * 100", (1200.0 - 950.0) / 950.0 * 100.0),
        ] {
            assert!((eval(expr) - want).abs() < 1e-9, "{expr} = {}", eval(expr));
        }
    }

    #[test]
    fn functions_and_constants() {
        for (expr, want) in [
            ("sqrt(16)", 4.0),
            ("abs(-3)", 3.0),
            ("max(1, 5, 3)", 5.0),
            ("min(4, -2)", -2.0),
            ("pow(2, 8)", 256.0),
            ("log(1000)", 3.0),
            ("log(8, 2)", 3.0),
            ("log2(8)", 3.0),
            ("ln(e)", 1.0),
            ("round(2.5) + floor(1.9) + ceil(1.1)", 3.0 + 1.0 + 2.0),
            ("cos(pi)", -1.0),
            ("SQRT(4)", 2.0),
            ("exp(0)", 1.0),
        ] {
            assert!((eval(expr) - want).abs() < 1e-9, "{expr} = {}", eval(expr));
        }
    }

    #[test]
    fn errors_say_what_and_where() {
        assert!(fails("").contains("empty"));
        assert!(fails("1 +").contains("ends too early"));
        assert!(fails("(1 + 2").contains("never closed"));
        assert!(fails("1 + 2)").contains("unexpected `)` at position 6"));
        assert!(fails("1 / 0").contains("division by zero"));
        assert!(fails("5 % 0").contains("division by zero"));
        assert!(fails("sqrt(-1)").contains("undefined"));
        assert!(fails("foo(1)").contains("unknown function `foo`"));
        assert!(fails("x + 1").contains("unknown name `x`"));
        assert!(fails("2 $ 3").contains("unexpected character `$` at position 3"));
        assert!(fails("1..2").contains("not a number"));
        assert!(fails("sqrt(1, 2)").contains("takes 1 argument"));
        assert!(fails("max()").contains("at least 1"));
        assert!(fails("10 ^ 400").contains("too large"));
        assert!(fails("1 2").contains("unexpected number 2"));
        assert!(fails("import os").contains("unknown name"));
    }

    #[test]
    fn input_is_bounded() {
        let long = "1+".repeat(MAX_EXPRESSION_LEN) + "1";
        assert!(fails(&long).contains("longer than"));
        let deep = "(".repeat(MAX_DEPTH + 1) + "1" + &")".repeat(MAX_DEPTH + 1);
        assert!(fails(&deep).contains("nests deeper"));
        let signs = "-".repeat(MAX_DEPTH + 1) + "1";
        assert!(fails(&signs).contains("nests deeper"));
        let ok = "(".repeat(MAX_DEPTH - 1) + "1" + &")".repeat(MAX_DEPTH - 1);
        assert_eq!(eval(&ok), 1.0);
    }

    #[test]
    fn the_tool_checks_its_arguments_and_answers_integers_exactly() {
        let out = call(&json!({"expression": " 6 * 7 "})).unwrap();
        assert_eq!(out, json!({"expression": "6 * 7", "result": 42}));
        let out = call(&json!({"expression": "1 / 4"})).unwrap();
        assert_eq!(out["result"], json!(0.25));
        for (args, wanted) in [
            (json!("6*7"), "JSON object"),
            (json!({}), "missing field `expression`"),
            (json!({"expression": 42}), "must be a string"),
            (json!({"expression": "1", "x": 1}), "unknown field `x`"),
            (json!({"expression": "1/0"}), "division by zero"),
        ] {
            let e = call(&args).unwrap_err();
            assert_eq!(e.class, ToolErrorClass::InvalidArguments);
            assert!(e.message.contains(wanted), "{args}: {}", e.message);
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any input ends in a value or an error, never a panic or a hang.
            #[test]
            fn never_panics(text in ".{0,200}") {
                let _ = evaluate(&text);
            }

            #[test]
            fn operator_soup_never_panics(text in "[0-9().+*/%^ ,a-z-]{0,300}") {
                let _ = evaluate(&text);
            }

            #[test]
            fn sums_of_integers_are_exact(a in -1_000_000i64..1_000_000, b in -1_000_000i64..1_000_000) {
                let want = (a + b) as f64; // small integers are exact
                prop_assert_eq!(evaluate(&format!("{a} + {b}")).unwrap(), want);
            }
        }
    }
}
