//! Consul's filter language (`?filter=`, go-bexpr,
//! <https://developer.hashicorp.com/consul/api-docs/features/filtering>) and `?node-meta=`,
//! evaluated over an item's JSON form so the server and the agent share one copy.
//!
//! Owns: parsing an expression against an endpoint's selector list ([`Schema`]) and deciding
//! whether one item matches. Must not know HTTP or the catalog: callers parse once (a parse
//! error is their 400) and keep the items [`Filter::matches`] accepts.
//!
//! Semantics, as Consul's: `or` binds loosest, then `and`, then `not`; a selector that passes
//! through a list (`Checks.Status`) matches if any element does, and the negated operators
//! (`!=`, `not in`, `not contains`, `not matches`) are the negation of the positive ones, so
//! `Checks.Status != passing` is "no check passes". A map key that is absent is empty: it
//! equals nothing and `is empty` holds.

use regex::Regex;
use serde::Serialize;
use serde_json::Value;

/// What a selector selects, which decides the operators it takes (Consul rejects `==` on a
/// list, for instance).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A string: every operator (`in`/`contains` are substring tests).
    Str,
    /// A boolean: `==` and `!=` with `true`/`false`.
    Bool,
    /// A number: `==` and `!=` with a number.
    Num,
    /// A list of strings: `in`, `contains`, `is empty` and their negations.
    List,
    /// A map of strings (`Meta`): `in`/`contains` test a key, `is empty`; `Meta.k` or
    /// `Meta["k"]` selects a value, a [`Kind::Str`].
    Map,
}

/// An endpoint's selectors: dotted paths (relative to one listed item) and their kinds.
pub type Schema = &'static [(&'static str, Kind)];

/// The selectors of Consul's endpoints, from their API docs.
pub mod schemas {
    use super::Kind::{self, Bool, List, Map, Num, Str};

    /// `/v1/catalog/nodes`: a node.
    pub const NODE: &[(&str, Kind)] = &[
        ("ID", Str),
        ("Node", Str),
        ("Address", Str),
        ("Datacenter", Str),
        ("TaggedAddresses", Map),
        ("Meta", Map),
    ];

    /// `/v1/catalog/service/:name` and `/v1/catalog/services`: a service instance with its
    /// node.
    pub const SERVICE_NODE: &[(&str, Kind)] = &[
        ("ID", Str),
        ("Node", Str),
        ("Address", Str),
        ("Datacenter", Str),
        ("TaggedAddresses", Map),
        ("NodeMeta", Map),
        ("ServiceKind", Str),
        ("ServiceID", Str),
        ("ServiceName", Str),
        ("ServiceTags", List),
        ("ServiceAddress", Str),
        ("ServiceTaggedAddresses", Map),
        ("ServiceMeta", Map),
        ("ServicePort", Num),
        ("ServiceEnableTagOverride", Bool),
        ("ServiceWeights.Passing", Num),
        ("ServiceWeights.Warning", Num),
    ];

    /// `/v1/health/node/:node`, `/v1/health/checks/:service`, `/v1/health/state/:state`
    /// and `/v1/agent/checks`: a check.
    pub const HEALTH_CHECK: &[(&str, Kind)] = &[
        ("Node", Str),
        ("CheckID", Str),
        ("Name", Str),
        ("Status", Str),
        ("Notes", Str),
        ("Output", Str),
        ("ServiceID", Str),
        ("ServiceName", Str),
        ("ServiceTags", List),
        ("Type", Str),
    ];

    /// `/v1/health/service/:name`: an instance with its node and checks.
    pub const SERVICE_ENTRY: &[(&str, Kind)] = &[
        ("Node.ID", Str),
        ("Node.Node", Str),
        ("Node.Address", Str),
        ("Node.Datacenter", Str),
        ("Node.TaggedAddresses", Map),
        ("Node.Meta", Map),
        ("Service.Kind", Str),
        ("Service.ID", Str),
        ("Service.Service", Str),
        ("Service.Tags", List),
        ("Service.Address", Str),
        ("Service.TaggedAddresses", Map),
        ("Service.Meta", Map),
        ("Service.Port", Num),
        ("Service.EnableTagOverride", Bool),
        ("Service.Weights.Passing", Num),
        ("Service.Weights.Warning", Num),
        ("Checks", List),
        ("Checks.Node", Str),
        ("Checks.CheckID", Str),
        ("Checks.Name", Str),
        ("Checks.Status", Str),
        ("Checks.Notes", Str),
        ("Checks.Output", Str),
        ("Checks.ServiceID", Str),
        ("Checks.ServiceName", Str),
        ("Checks.ServiceTags", List),
        ("Checks.Type", Str),
    ];

    /// `/v1/agent/services`: a local service.
    pub const AGENT_SERVICE: &[(&str, Kind)] = &[
        ("Kind", Str),
        ("ID", Str),
        ("Service", Str),
        ("Tags", List),
        ("Meta", Map),
        ("Port", Num),
        ("Address", Str),
        ("TaggedAddresses", Map),
        ("Weights.Passing", Num),
        ("Weights.Warning", Num),
        ("EnableTagOverride", Bool),
        ("Datacenter", Str),
    ];
}

/// How deeply `(` and `not` may nest.
const MAX_DEPTH: usize = 64;
/// Longest filter expression accepted: it comes from the network, and its cost is paid for
/// every item of an answer.
pub const MAX_FILTER_LEN: usize = 4096;
/// Most `matches` clauses in one expression.
const MAX_REGEXES: usize = 16;
/// Compiled size allowed for one regular expression (the `regex` crate's default is 10 MiB;
/// `\w{100}` alone compiles to about 6 MB).
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// Consul's prefix for every filter error.
const PREFIX: &str = "Failed to create boolean expression evaluator: ";

/// A parsed filter expression, ready to test items.
#[derive(Debug)]
pub struct Filter {
    /// The expression tree.
    expr: Expr,
}

/// A node of the expression tree.
#[derive(Debug)]
enum Expr {
    /// Both sides hold.
    And(Vec<Expr>),
    /// Either side holds.
    Or(Vec<Expr>),
    /// The inner expression does not hold.
    Not(Box<Expr>),
    /// One matching expression.
    Match(Match),
}

/// `<selector> <op> <value>` (or `<value> in <selector>`).
#[derive(Debug)]
struct Match {
    /// The selector's path segments.
    path: Vec<String>,
    /// The positive operator.
    op: Op,
    /// Whether the result is negated (`!=`, `not in`, `is not empty`, ...).
    negated: bool,
}

/// The positive operators.
#[derive(Debug)]
enum Op {
    /// `==`: the value, as text (compared as the selected JSON type).
    Equal(String),
    /// `in` / `contains`: substring, list element or map key.
    Contains(String),
    /// `matches`: a regular expression.
    Matches(Regex),
    /// `is empty`.
    IsEmpty,
}

impl Filter {
    /// Parses `text` against the endpoint's `schema`; the error is the text for a 400.
    pub fn parse(text: &str, schema: Schema) -> Result<Filter, String> {
        if text.len() > MAX_FILTER_LEN {
            return Err(format!(
                "{PREFIX}filter expression longer than {MAX_FILTER_LEN} bytes"
            ));
        }
        let tokens = lex(text).map_err(|e| format!("{PREFIX}{e}"))?;
        let mut p = Parser {
            tokens,
            pos: 0,
            depth: 0,
            regexes: 0,
            schema,
            text,
        };
        let expr = p.or_expr()?;
        if let Some(t) = p.tokens.get(p.pos) {
            return Err(p.syntax(t.at, "no match found, expected \"and\", \"or\" or EOF"));
        }
        Ok(Filter { expr })
    }

    /// Whether `item` (in its JSON form) matches.
    pub fn matches(&self, item: &Value) -> bool {
        eval(&self.expr, item)
    }

    /// Whether `item` matches, serialised first; an item that does not serialise does not.
    pub fn matches_item<T: Serialize>(&self, item: &T) -> bool {
        serde_json::to_value(item).is_ok_and(|v| self.matches(&v))
    }
}

/// `?node-meta=key:value` pairs (repeatable); each must hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeMeta(pub Vec<(String, String)>);

impl NodeMeta {
    /// From the query's `node-meta` values; `key` without a colon wants an empty value,
    /// as Consul's parser gives.
    pub fn from_query<'a>(values: impl IntoIterator<Item = &'a str>) -> NodeMeta {
        NodeMeta(
            values
                .into_iter()
                .map(|v| match v.split_once(':') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (v.to_string(), String::new()),
                })
                .collect(),
        )
    }

    /// No pairs: everything matches.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a node's meta map has every pair.
    pub fn matches<'a>(&self, meta: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|(k, v)| meta(k) == Some(v.as_str()))
    }
}

// Evaluation.

fn eval(e: &Expr, item: &Value) -> bool {
    match e {
        Expr::And(all) => all.iter().all(|e| eval(e, item)),
        Expr::Or(any) => any.iter().any(|e| eval(e, item)),
        Expr::Not(a) => !eval(a, item),
        Expr::Match(m) => {
            let mut found = Vec::new();
            select(item, &m.path, &mut found);
            let hit = if found.is_empty() {
                // Absent: empty, equal to nothing.
                matches!(m.op, Op::IsEmpty)
            } else {
                found.iter().any(|v| test(&m.op, v))
            };
            hit != m.negated
        }
    }
}

/// The values `path` reaches in `v`; through a list, each element's.
fn select<'a>(v: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    match (path.split_first(), v) {
        (None, _) => out.push(v),
        (Some(_), Value::Array(items)) => {
            for item in items {
                select(item, path, out);
            }
        }
        (Some((first, rest)), Value::Object(map)) => {
            if let Some(next) = map.get(first) {
                select(next, rest, out);
            }
        }
        _ => {}
    }
}

fn test(op: &Op, v: &Value) -> bool {
    match op {
        Op::Equal(want) => match v {
            Value::String(s) => s == want,
            Value::Bool(b) => want.parse::<bool>().is_ok_and(|w| w == *b),
            Value::Number(n) => match (n.as_f64(), want.parse::<f64>()) {
                (Some(a), Ok(b)) => a == b,
                _ => false,
            },
            Value::Null => want.is_empty(),
            _ => false,
        },
        Op::Contains(want) => match v {
            Value::String(s) => s.contains(want.as_str()),
            Value::Array(items) => items.iter().any(|i| i.as_str() == Some(want)),
            Value::Object(map) => map.contains_key(want),
            _ => false,
        },
        Op::Matches(re) => v.as_str().is_some_and(|s| re.is_match(s)),
        Op::IsEmpty => match v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(m) => m.is_empty(),
            _ => false,
        },
    }
}

// Lexing.

/// A token and the byte offset it starts at.
#[derive(Debug, Clone)]
struct Token {
    /// What it is.
    tok: Tok,
    /// Byte offset in the expression.
    at: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `[`
    LBracket,
    /// `]`
    RBracket,
    /// `.` between selector parts.
    Dot,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// A quoted string (double quotes with escapes, or backticks, raw).
    Quoted(String),
    /// A bare word: an identifier, keyword or number.
    Word(String),
}

/// Consul's position prefix, `line:column (offset)`.
fn position(text: &str, at: usize) -> String {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{col} ({at})")
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        let tok = match c {
            c if c.is_whitespace() => {
                chars.next();
                continue;
            }
            '(' | ')' | '[' | ']' | '.' => {
                chars.next();
                match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    _ => Tok::Dot,
                }
            }
            '=' | '!' => {
                chars.next();
                match chars.next() {
                    Some((_, '=')) if c == '=' => Tok::Eq,
                    Some((_, '=')) => Tok::Ne,
                    _ => {
                        return Err(format!(
                            "{}: no match found, expected: \"!=\" or \"==\"",
                            position(text, at)
                        ))
                    }
                }
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => s.push('\n'),
                            Some((_, 't')) => s.push('\t'),
                            Some((_, 'r')) => s.push('\r'),
                            Some((_, e)) => s.push(e),
                            None => break,
                        },
                        Some((_, ch)) => s.push(ch),
                        None => {
                            return Err(format!(
                                "{}: unterminated string literal",
                                position(text, at)
                            ))
                        }
                    }
                }
                Tok::Quoted(s)
            }
            '`' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '`')) => break,
                        Some((_, ch)) => s.push(ch),
                        None => {
                            return Err(format!(
                                "{}: unterminated string literal",
                                position(text, at)
                            ))
                        }
                    }
                }
                Tok::Quoted(s)
            }
            c if is_word_char(c) || c == '-' => {
                // A leading '-' only for a negative number.
                let mut s = String::new();
                s.push(c);
                chars.next();
                while let Some(&(_, ch)) = chars.peek() {
                    // Dots continue a number (`1.5`), not a selector (`Meta.x`).
                    let number = s
                        .trim_start_matches('-')
                        .starts_with(|d: char| d.is_ascii_digit());
                    if is_word_char(ch) || (ch == '.' && number) {
                        s.push(ch);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if s.starts_with('-') && !s[1..].starts_with(|d: char| d.is_ascii_digit()) {
                    return Err(format!(
                        "{}: no match found, expected a number",
                        position(text, at)
                    ));
                }
                Tok::Word(s)
            }
            other => {
                return Err(format!(
                    "{}: no match found, unexpected {other:?}",
                    position(text, at)
                ))
            }
        };
        out.push(Token { tok, at });
    }
    Ok(out)
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

// Parsing.

/// Recursive descent over the tokens.
struct Parser<'a> {
    /// The tokens.
    tokens: Vec<Token>,
    /// The next token's index.
    pos: usize,
    /// The endpoint's selectors.
    schema: Schema,
    /// How many `(` and `not` enclose the current position (bounded: [`MAX_DEPTH`]).
    depth: usize,
    /// How many `matches` clauses so far (bounded: [`MAX_REGEXES`]).
    regexes: usize,
    /// The expression, for error positions.
    text: &'a str,
}

/// A selector or a value, before the operator decides which it is.
enum Operand {
    /// A selector (bare words joined by dots or indexes).
    Path(Vec<String>),
    /// A quoted string.
    Quoted(String),
}

impl Parser<'_> {
    fn syntax(&self, at: usize, what: &str) -> String {
        format!("{PREFIX}{}: {what}", position(self.text, at))
    }

    fn end(&self) -> usize {
        self.text.len()
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    fn peek_at(&self, n: usize) -> Option<&Tok> {
        self.tokens.get(self.pos + n).map(|t| &t.tok)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end(), |t| t.at)
    }

    fn keyword(&self, n: usize, word: &str) -> bool {
        matches!(self.peek_at(n), Some(Tok::Word(w)) if w == word)
    }

    // `and` and `or` chains are flat lists, so neither parsing nor evaluating (nor
    // dropping) a long chain recurses once per term.
    fn or_expr(&mut self) -> Result<Expr, String> {
        let mut any = vec![self.and_expr()?];
        while self.keyword(0, "or") {
            self.pos += 1;
            any.push(self.and_expr()?);
        }
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            Expr::Or(any)
        })
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut all = vec![self.not_expr()?];
        while self.keyword(0, "and") {
            self.pos += 1;
            all.push(self.not_expr()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Expr::And(all)
        })
    }

    fn not_expr(&mut self) -> Result<Expr, String> {
        let nested = self.keyword(0, "not") || self.peek() == Some(&Tok::LParen);
        if !nested {
            return self.match_expr().map(Expr::Match);
        }
        // The expression comes from the network: bound the recursion, or `((((...` or
        // `not not not ...` in a long query string would overflow the stack.
        if self.depth >= MAX_DEPTH {
            return Err(self.syntax(
                self.at(),
                &format!("expression nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.depth += 1;
        let inner = if self.keyword(0, "not") {
            self.pos += 1;
            self.not_expr().map(|e| Expr::Not(Box::new(e)))
        } else {
            self.pos += 1;
            self.or_expr().and_then(|inner| {
                if self.peek() != Some(&Tok::RParen) {
                    return Err(self.syntax(self.at(), "no match found, expected \")\""));
                }
                self.pos += 1;
                Ok(inner)
            })
        };
        self.depth -= 1;
        inner
    }

    /// A selector or a value: a quoted string, or words joined by `.` and `["key"]`.
    fn operand(&mut self) -> Result<(Operand, usize), String> {
        let at = self.at();
        match self.peek().cloned() {
            Some(Tok::Quoted(s)) => {
                self.pos += 1;
                Ok((Operand::Quoted(s), at))
            }
            Some(Tok::Word(w)) => {
                self.pos += 1;
                let mut path = vec![w];
                loop {
                    match (self.peek(), self.peek_at(1), self.peek_at(2)) {
                        (Some(Tok::Dot), Some(Tok::Word(w)), _) => {
                            path.push(w.clone());
                            self.pos += 2;
                        }
                        (Some(Tok::LBracket), Some(Tok::Quoted(k)), Some(Tok::RBracket)) => {
                            path.push(k.clone());
                            self.pos += 3;
                        }
                        (Some(Tok::Dot | Tok::LBracket), _, _) => {
                            return Err(self.syntax(
                                self.at(),
                                "no match found, expected an identifier or [\"key\"]",
                            ))
                        }
                        _ => break,
                    }
                }
                Ok((Operand::Path(path), at))
            }
            _ => Err(self.syntax(at, "no match found, expected a selector or a value")),
        }
    }

    /// A value: a quoted string, or a bare word (Consul takes `Node == web1` as "web1").
    fn value(&mut self) -> Result<String, String> {
        match self.operand()? {
            (Operand::Quoted(s), _) => Ok(s),
            (Operand::Path(p), _) => Ok(p.join(".")),
        }
    }

    fn match_expr(&mut self) -> Result<Match, String> {
        let (first, _) = self.operand()?;
        // `<value> [not] in <selector>`.
        let not_in = self.keyword(0, "not") && self.keyword(1, "in");
        if self.keyword(0, "in") || not_in {
            self.pos += if not_in { 2 } else { 1 };
            let value = match first {
                Operand::Quoted(s) => s,
                Operand::Path(p) => p.join("."),
            };
            let (sel, sel_at) = self.operand()?;
            let Operand::Path(path) = sel else {
                return Err(self.syntax(sel_at, "no match found, expected a selector"));
            };
            return self.checked(path, Op::Contains(value), not_in, "In");
        }
        let Operand::Path(path) = first else {
            return Err(self.syntax(
                self.at(),
                "no match found, expected \"in\" or \"not in\" after a value",
            ));
        };
        let op_at = self.at();
        match self.peek().cloned() {
            Some(Tok::Eq) | Some(Tok::Ne) => {
                let negated = self.peek() == Some(&Tok::Ne);
                self.pos += 1;
                let value = self.value()?;
                self.checked(path, Op::Equal(value), negated, "Equal")
            }
            Some(Tok::Word(w)) if w == "is" => {
                self.pos += 1;
                let negated = self.keyword(0, "not");
                if negated {
                    self.pos += 1;
                }
                if !self.keyword(0, "empty") {
                    return Err(self.syntax(self.at(), "no match found, expected \"empty\""));
                }
                self.pos += 1;
                self.checked(path, Op::IsEmpty, negated, "Is Empty")
            }
            Some(Tok::Word(w)) if w == "contains" || w == "matches" || w == "not" => {
                let negated = w == "not";
                if negated {
                    self.pos += 1;
                }
                let op = match self.peek() {
                    Some(Tok::Word(w)) if w == "contains" || w == "matches" => w.clone(),
                    _ => {
                        return Err(self.syntax(
                            self.at(),
                            "no match found, expected \"contains\" or \"matches\"",
                        ))
                    }
                };
                self.pos += 1;
                let value = self.value()?;
                if op == "contains" {
                    self.checked(path, Op::Contains(value), negated, "Contains")
                } else {
                    self.regexes += 1;
                    if self.regexes > MAX_REGEXES {
                        return Err(format!(
                            "{PREFIX}more than {MAX_REGEXES} \"matches\" clauses in one filter"
                        ));
                    }
                    let re = regex::RegexBuilder::new(&value)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .dfa_size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|e| {
                            format!("{PREFIX}Failed to compile regular expression {value:?}: {e}")
                        })?;
                    self.checked(path, Op::Matches(re), negated, "Matches")
                }
            }
            _ => Err(self.syntax(
                op_at,
                "no match found, expected \"!=\", \"==\", \"contains\", \"in\", \"is\", \
                 \"matches\", \"not\"",
            )),
        }
    }

    /// Checks the selector against the schema and the operator against its kind.
    fn checked(
        &self,
        path: Vec<String>,
        op: Op,
        negated: bool,
        name: &str,
    ) -> Result<Match, String> {
        let shown = path.join(".");
        let kind = kind_of(self.schema, &path)
            .ok_or_else(|| format!("{PREFIX}Selector {shown:?} is not valid"))?;
        let ok = match (&op, kind) {
            (_, Kind::Str) => true,
            (Op::Equal(v), Kind::Bool) => v.parse::<bool>().is_ok(),
            (Op::Equal(v), Kind::Num) => v.parse::<f64>().is_ok(),
            (Op::Contains(_) | Op::IsEmpty, Kind::List | Kind::Map) => true,
            _ => false,
        };
        if !ok {
            let op_name = if negated {
                match name {
                    "Is Empty" => "Is Not Empty".to_string(),
                    "In" | "Contains" | "Matches" => format!("Not {name}"),
                    _ => "Not Equal".to_string(),
                }
            } else {
                name.to_string()
            };
            return Err(match (&op, kind) {
                (Op::Equal(v), Kind::Bool | Kind::Num) => format!(
                    "{PREFIX}Failed to convert value {v:?} for selector {shown:?} \
                     (expected a {})",
                    if kind == Kind::Bool { "bool" } else { "number" }
                ),
                _ => format!("{PREFIX}Invalid match operator {op_name:?} for selector {shown:?}"),
            });
        }
        Ok(Match { path, op, negated })
    }
}

/// The kind of the selector `path` in `schema`: a listed path, or a key under a map.
fn kind_of(schema: Schema, path: &[String]) -> Option<Kind> {
    let joined = path.join(".");
    if let Some((_, k)) = schema.iter().find(|(p, _)| *p == joined) {
        return Some(*k);
    }
    let (_, parent) = path.split_last()?;
    let parent = parent.join(".");
    schema
        .iter()
        .any(|(p, k)| *p == parent && *k == Kind::Map)
        .then_some(Kind::Str)
}

#[cfg(test)]
mod tests {
    use super::schemas::{AGENT_SERVICE, HEALTH_CHECK, NODE, SERVICE_ENTRY};
    use super::*;

    /// From the review: a few KB of `matches` clauses compiled to a GB of regex programs.
    #[test]
    fn expensive_filters_are_refused_before_they_cost() {
        let many = vec![r#"Node matches "a""#; MAX_REGEXES + 1].join(" or ");
        assert!(Filter::parse(&many, NODE).unwrap_err().contains("matches"));
        let big = r#"Node matches "(\w{100}){100}""#;
        assert!(
            Filter::parse(big, NODE).is_err(),
            "regex over the size limit"
        );
        let long = format!(r#"Node == "{}""#, "x".repeat(MAX_FILTER_LEN));
        assert!(Filter::parse(&long, NODE).unwrap_err().contains("longer"));
        assert!(Filter::parse(r#"Node matches "^web-[0-9]+$""#, NODE).is_ok());
    }
    use serde_json::json;

    fn entry() -> Value {
        json!({
            "Node": {"ID": "", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
                     "TaggedAddresses": {}, "Meta": {"rack": "r1", "env": "prod"}},
            "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1", "primary"],
                        "Address": "", "Meta": {"version": "1.2"}, "Port": 8080,
                        "EnableTagOverride": false},
            "Checks": [
                {"Node": "n1", "CheckID": "serfHealth", "Status": "passing", "ServiceTags": []},
                {"Node": "n1", "CheckID": "service:web-1", "Status": "critical",
                 "ServiceTags": ["v1"]}
            ]
        })
    }

    /// Valid expressions and whether the entry matches.
    #[test]
    fn expressions_evaluate_as_consul_does() {
        let cases: &[(&str, bool)] = &[
            ("Service.Service == web", true),
            ("Service.Service == \"web\"", true),
            ("Service.Service == `web`", true),
            ("Service.Service != web", false),
            ("Service.Service==web", true),
            ("v1 in Service.Tags", true),
            ("\"v2\" in Service.Tags", false),
            ("v2 not in Service.Tags", true),
            ("Service.Tags contains primary", true),
            ("Service.Tags not contains primary", false),
            ("Service.Meta.version == \"1.2\"", true),
            ("Service.Meta[\"version\"] == \"1.2\"", true),
            ("Service.Meta.missing == x", false),
            ("Service.Meta.missing is empty", true),
            ("Service.Meta.missing != x", true),
            ("version in Service.Meta", true),
            ("Service.Meta is not empty", true),
            ("Service.Address is empty", true),
            ("Node.Meta.rack == r1 and Node.Meta.env == prod", true),
            ("Node.Meta.rack == r2 or Node.Meta.env == prod", true),
            ("Node.Meta.rack == r2 or Node.Meta.env == dev", false),
            ("not Node.Meta.rack == r2", true),
            ("not (Node.Meta.rack == r1 and Service.Port == 8080)", false),
            ("Service.Port == 8080", true),
            ("Service.Port != 8081", true),
            ("Service.EnableTagOverride == false", true),
            ("Service.Service matches \"^w.b$\"", true),
            ("Service.Service not matches \"^api\"", true),
            ("Node.Node contains \"n\"", true),
            ("\"10.0\" in Node.Address", true),
            // Through a list: any element.
            ("Checks.Status == critical", true),
            ("Checks.Status == warning", false),
            ("Checks.Status != passing", false),
            (
                "Checks.CheckID == serfHealth and Checks.Status == passing",
                true,
            ),
            ("v1 in Checks.ServiceTags", true),
            // `or` binds looser than `and`; `not` tighter than both.
            (
                "Service.Service == api and Service.Port == 1 or Node.Node == n1",
                true,
            ),
            (
                "Service.Service == api and (Service.Port == 1 or Node.Node == n1)",
                false,
            ),
            ("not Service.Service == api and Node.Node == n1", true),
            ("( Service.Service == web )", true),
        ];
        let item = entry();
        for (text, want) in cases {
            let f = Filter::parse(text, SERVICE_ENTRY).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(f.matches(&item), *want, "{text}");
        }
    }

    /// Invalid expressions and a piece of the reason.
    #[test]
    fn invalid_expressions_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("foo", "1:4 (3): no match found"),
            ("Node.Node == host-name", "no match found"),
            ("Foo == bar", "Selector \"Foo\" is not valid"),
            (
                "Service.Nope == bar",
                "Selector \"Service.Nope\" is not valid",
            ),
            (
                "Service.Tags == v1",
                "Invalid match operator \"Equal\" for selector \"Service.Tags\"",
            ),
            (
                "Service.Port matches x",
                "Invalid match operator \"Matches\"",
            ),
            ("Service.Port == abc", "Failed to convert value \"abc\""),
            ("Service.Service == ", "expected a selector or a value"),
            ("(Service.Service == web", "expected \")\""),
            (
                "Service.Service == web and",
                "expected a selector or a value",
            ),
            (
                "Service.Service == web web",
                "expected \"and\", \"or\" or EOF",
            ),
            ("Service.Service = web", "expected: \"!=\" or \"==\""),
            ("Service.Service == \"web", "unterminated string literal"),
            (
                "Service.Service matches \"(\"",
                "Failed to compile regular expression",
            ),
            ("Service.Service is full", "expected \"empty\""),
            ("\"x\" == Service.Service", "expected \"in\" or \"not in\""),
            ("", "expected a selector or a value"),
        ];
        for (text, want) in cases {
            match Filter::parse(text, SERVICE_ENTRY) {
                Ok(f) => panic!("{text:?} parsed: {f:?}"),
                Err(e) => {
                    assert!(e.starts_with(PREFIX), "{text:?}: {e}");
                    assert!(e.contains(want), "{text:?}: {e} lacks {want:?}");
                }
            }
        }
    }

    /// Each endpoint knows its own selectors only.
    #[test]
    fn selectors_depend_on_the_endpoint() {
        assert!(Filter::parse("Meta.rack == r1", NODE).is_ok());
        assert!(Filter::parse("Node.Meta.rack == r1", NODE).is_err());
        assert!(Filter::parse(
            "Status == passing and ServiceTags contains v1",
            HEALTH_CHECK
        )
        .is_ok());
        assert!(Filter::parse("Service == web and Tags contains v1", AGENT_SERVICE).is_ok());
        let node = json!({"Node": "n1", "Meta": {"rack": "r1"}});
        let f = Filter::parse("Meta.rack == r1 and Node matches `^n`", NODE).unwrap();
        assert!(f.matches(&node));
    }

    /// Nesting is bounded (the text comes from the network); long flat chains are fine.
    #[test]
    fn deep_nesting_is_refused_and_long_chains_are_not() {
        let deep = format!(
            "{}Node == n1{}",
            "(".repeat(MAX_DEPTH + 6),
            ")".repeat(MAX_DEPTH + 6)
        );
        let e = Filter::parse(&deep, NODE).unwrap_err();
        assert!(e.contains("nested deeper than"), "{e}");
        let nots = format!("{}Node == n1", "not ".repeat(MAX_DEPTH + 6));
        assert!(Filter::parse(&nots, NODE).is_err());
        let ok = format!("{}Node == n1", "not not ".repeat(20));
        assert!(Filter::parse(&ok, NODE).is_ok());
        // As long a flat chain as the length bound lets through.
        let chain = vec!["Node == x"; 250].join(" or ") + " or Node == n1";
        let f = Filter::parse(&chain, NODE).unwrap();
        assert!(f.matches(&json!({"Node": "n1"})));
        let chain = vec!["Node == n1"; 250].join(" and ");
        assert!(Filter::parse(&chain, NODE)
            .unwrap()
            .matches(&json!({"Node": "n1"})));
    }

    #[test]
    fn node_meta_pairs_all_hold() {
        let m = NodeMeta::from_query(["rack:r1", "env:prod:blue", "bare"]);
        assert_eq!(
            m.0,
            vec![
                ("rack".into(), "r1".into()),
                ("env".into(), "prod:blue".into()),
                ("bare".into(), String::new())
            ]
        );
        let meta = json!({"rack": "r1", "env": "prod:blue", "bare": ""});
        assert!(m.matches(|k| meta.get(k).and_then(Value::as_str)));
        let other = json!({"rack": "r1"});
        assert!(!m.matches(|k| other.get(k).and_then(Value::as_str)));
        assert!(NodeMeta::default().matches(|_| None));
    }
}
