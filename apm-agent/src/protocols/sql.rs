//! SQL statement normalization, shared by the PostgreSQL and MySQL parsers: literals become
//! `?` before any text leaves the parser, so a password in an `ALTER USER`, an e-mail in a
//! `WHERE`, or a card number in an `INSERT` is never exported. The normalized text is also the
//! statement's identity for slow-query and N+1 aggregation, so it is made stable: comments
//! dropped, whitespace collapsed, lists of placeholders collapsed to one.
//!
//! A small hand-written scanner, not a SQL parser: it only needs to tell literals, quoted
//! identifiers and comments apart, and it never fails (unknown bytes are copied as they are,
//! truncated input ends the statement).

/// Longest normalized statement kept (bytes); longer ones end with `...`.
pub const MAX_QUERY_BYTES: usize = 2048;
/// Longest operation keyword kept.
const MAX_OPERATION_BYTES: usize = 24;
/// Longest collection (table) name kept.
const MAX_COLLECTION_BYTES: usize = 128;

/// Which quoting rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `"..."` is an identifier, `$tag$...$tag$` a string, `E'...'` may hold `\'`.
    Postgres,
    /// `"..."` is a string (default `sql_mode`), `` `...` `` an identifier, `\` escapes.
    Mysql,
}

/// A normalized statement and what it says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Normalized text (`db.query.text`).
    pub text: String,
    /// First keyword, upper-case (`db.operation.name`); `_OTHER` when there is none.
    pub operation: String,
    /// The single table the statement names, if it names exactly one in a simple form.
    pub collection: Option<String>,
}

/// Normalizes `sql` (possibly truncated, possibly not UTF-8).
pub fn normalize(sql: &[u8], dialect: Dialect) -> Statement {
    let text = obfuscate(sql, dialect);
    let (operation, collection) = summarize(&text);
    Statement {
        text,
        operation,
        collection,
    }
}

/// Replaces literals with `?`, drops comments, collapses whitespace and placeholder lists.
pub fn obfuscate(sql: &[u8], dialect: Dialect) -> String {
    let mut out = Vec::with_capacity(sql.len().min(MAX_QUERY_BYTES));
    let mut i = 0;
    let n = sql.len();
    // A space is owed before the next token (collapsed whitespace).
    let mut space = false;
    while i < n {
        if out.len() >= MAX_QUERY_BYTES {
            break;
        }
        let c = sql[i];
        // Whitespace.
        if c.is_ascii_whitespace() {
            space = !out.is_empty();
            i += 1;
            continue;
        }
        // Comments: `-- ...`, `# ...` (MySQL), `/* ... */`.
        if (c == b'-' && sql.get(i + 1) == Some(&b'-')) || (c == b'#' && dialect == Dialect::Mysql)
        {
            i = skip_until(sql, i, b"\n");
            space = !out.is_empty();
            continue;
        }
        if c == b'/' && sql.get(i + 1) == Some(&b'*') {
            i = skip_until(sql, i + 2, b"*/");
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(b' ');
            space = false;
        }
        // What was written just before: a literal never continues an identifier (`t1`, `$1`).
        let prev = out.last().copied();
        match c {
            b'\'' => {
                i = skip_string(sql, i, b'\'', backslash_escapes(dialect));
                push_placeholder(&mut out);
            }
            b'"' if dialect == Dialect::Mysql => {
                i = skip_string(sql, i, b'"', true);
                push_placeholder(&mut out);
            }
            b'"' | b'`' => {
                // Quoted identifier: kept as it is.
                let end = skip_string(sql, i, c, false);
                out.extend_from_slice(&sql[i..end]);
                i = end;
            }
            // E'..', N'..', X'..', B'..', U&'..' string prefixes.
            b'E' | b'e' | b'N' | b'n' | b'X' | b'x' | b'B' | b'b'
                if sql.get(i + 1) == Some(&b'\'') && !is_ident(prev) =>
            {
                let escapes = matches!(c, b'E' | b'e') || dialect == Dialect::Mysql;
                i = skip_string(sql, i + 1, b'\'', escapes);
                push_placeholder(&mut out);
            }
            // Dollar quoting: $$...$$ or $tag$...$tag$; `$1` is a placeholder and stays.
            b'$' if dialect == Dialect::Postgres && !is_ident(prev) => match dollar_tag(sql, i) {
                Some(tag_end) => {
                    let tag = &sql[i..tag_end];
                    i = match find(sql, tag_end, tag) {
                        Some(close) => close + tag.len(),
                        None => n,
                    };
                    push_placeholder(&mut out);
                }
                None => {
                    let end = i
                        + 1
                        + sql[i + 1..]
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .count();
                    out.extend_from_slice(&sql[i..end]);
                    i = end;
                }
            },
            b'0'..=b'9' if !is_ident(prev) => {
                i = skip_number(sql, i);
                push_placeholder(&mut out);
            }
            b'.' if !is_ident(prev) && sql.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = skip_number(sql, i);
                push_placeholder(&mut out);
            }
            _ if is_ident_byte(c) => {
                let end = i + sql[i..].iter().take_while(|&&b| is_ident_byte(b)).count();
                out.extend_from_slice(&sql[i..end]);
                i = end;
            }
            b',' => {
                // `, ` is written as one token so lists read naturally.
                if out.last() == Some(&b' ') {
                    out.pop();
                }
                out.push(b',');
                space = true;
                i += 1;
            }
            b')' => {
                if out.last() == Some(&b' ') {
                    out.pop();
                }
                out.push(b')');
                collapse_list(&mut out);
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
                if c == b'(' {
                    // No space after an opening parenthesis.
                    while sql.get(i).is_some_and(u8::is_ascii_whitespace) {
                        i += 1;
                    }
                }
            }
        }
    }
    // Cut when input is left over, and when the last token (an identifier or a quoted one,
    // copied whole) ran past the limit itself.
    if out.len() > MAX_QUERY_BYTES || (i < n && out.len() == MAX_QUERY_BYTES) {
        out.truncate(MAX_QUERY_BYTES);
        out.extend_from_slice(b"...");
    }
    while out.last() == Some(&b' ') || out.last() == Some(&b';') {
        out.pop();
    }
    into_string(out)
}

/// Lossless for UTF-8, lossy otherwise (the scanner only splits at ASCII bytes, so valid input
/// stays valid; truncation may cut a character, which becomes U+FFFD).
fn into_string(out: Vec<u8>) -> String {
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Does a plain `'...'` string take backslash escapes? In MySQL by default; in PostgreSQL
/// only with the `E` prefix (`standard_conforming_strings` is on since 9.1).
fn backslash_escapes(dialect: Dialect) -> bool {
    dialect == Dialect::Mysql
}

/// A literal replaced: `?`, and a `-` sign written just before it goes with it when it is a
/// sign (after an operator or an opening parenthesis), so `= -5` and `= 5` normalize alike.
fn push_placeholder(out: &mut Vec<u8>) {
    if out.last() == Some(&b'-') {
        let before = out.iter().rev().nth(1).copied();
        if matches!(before, None | Some(b'(' | b',' | b'=' | b'<' | b'>' | b' ')) {
            out.pop();
        }
    }
    out.push(b'?');
}

/// `(?, ?, ?)` -> `(?)` just after its `)` was written, and `(?), (?)` -> `(?)` (multi-row
/// VALUES), so statements that differ only in list length share one identity.
fn collapse_list(out: &mut Vec<u8>) {
    let Some(open) = out.iter().rposition(|&b| b == b'(') else {
        return;
    };
    let inner = &out[open + 1..out.len() - 1];
    let only_placeholders = !inner.is_empty()
        && inner.iter().all(|b| matches!(b, b'?' | b',' | b' '))
        && inner.contains(&b'?');
    if !only_placeholders {
        return;
    }
    out.truncate(open);
    // A previous `(?), ` group absorbs this one.
    if out.ends_with(b"(?), ") {
        out.truncate(out.len() - 2);
        return;
    }
    out.extend_from_slice(b"(?)");
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Is the previous output byte part of an identifier (so `t1`, `$1`, `x'` are not literals)?
fn is_ident(prev: Option<u8>) -> bool {
    prev.is_some_and(|b| is_ident_byte(b) || b == b'$')
}

/// Index just past `end` found from `from`, or the end of input.
fn skip_until(sql: &[u8], from: usize, end: &[u8]) -> usize {
    match find(sql, from, end) {
        Some(at) => at + end.len(),
        None => sql.len(),
    }
}

fn find(sql: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from > sql.len() || needle.is_empty() {
        return None;
    }
    sql[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Index just past the string opened by the quote at `i` (doubled quotes stay inside; with
/// `escapes`, so does a backslash-escaped quote). Unterminated strings run to the end.
fn skip_string(sql: &[u8], i: usize, quote: u8, escapes: bool) -> usize {
    let mut j = i + 1;
    while j < sql.len() {
        let b = sql[j];
        if escapes && b == b'\\' {
            j += 2;
            continue;
        }
        if b == quote {
            if sql.get(j + 1) == Some(&quote) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    sql.len()
}

/// `$tag$` at `i`: the index just past its closing `$`, if it is a dollar-quote opener.
fn dollar_tag(sql: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < sql.len() {
        let b = sql[j];
        if b == b'$' {
            return Some(j + 1);
        }
        let ok = if j == i + 1 {
            b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
        } else {
            is_ident_byte(b)
        };
        if !ok {
            return None;
        }
        j += 1;
    }
    None
}

/// Index just past a numeric literal (decimal, exponent, hex `0x..`).
fn skip_number(sql: &[u8], i: usize) -> usize {
    let n = sql.len();
    let mut j = i;
    if sql[j] == b'0' && matches!(sql.get(j + 1), Some(b'x' | b'X')) {
        j += 2;
        while j < n && sql[j].is_ascii_hexdigit() {
            j += 1;
        }
        return j;
    }
    while j < n && (sql[j].is_ascii_digit() || sql[j] == b'.') {
        j += 1;
    }
    if j < n && matches!(sql[j], b'e' | b'E') {
        let mut k = j + 1;
        if k < n && matches!(sql[k], b'+' | b'-') {
            k += 1;
        }
        if k < n && sql[k].is_ascii_digit() {
            j = k;
            while j < n && sql[j].is_ascii_digit() {
                j += 1;
            }
        }
    }
    j
}

/// The operation keyword and the single table of a normalized statement.
fn summarize(text: &str) -> (String, Option<String>) {
    let mut words = text
        .split(|c: char| c.is_ascii_whitespace() || c == '(' || c == ')' || c == ',' || c == ';')
        .filter(|w| !w.is_empty());
    let Some(first) = words.next() else {
        return ("_OTHER".to_owned(), None);
    };
    if !first.bytes().all(|b| b.is_ascii_alphabetic()) || first.len() > MAX_OPERATION_BYTES {
        return ("_OTHER".to_owned(), None);
    }
    let operation = first.to_ascii_uppercase();
    let collection = match operation.as_str() {
        "SELECT" | "DELETE" => single_table_after(text, "FROM"),
        "INSERT" | "REPLACE" => single_table_after(text, "INTO"),
        "UPDATE" => single_table_at(text, first.len()),
        "TRUNCATE" | "COPY" | "LOCK" => {
            let at = find_keyword(text, "TABLE").map_or(first.len(), |p| p + "TABLE".len());
            single_table_at(text, at)
        }
        _ => None,
    };
    (operation, collection)
}

/// The table after the first `keyword`, if the statement names no other (no JOIN, no comma
/// list, no sub-select in the FROM).
fn single_table_after(text: &str, keyword: &str) -> Option<String> {
    let at = find_keyword(text, keyword)? + keyword.len();
    if find_keyword(text, "JOIN").is_some() {
        return None;
    }
    let table = single_table_at(text, at)?;
    // `FROM a, b` names two.
    let rest = text[at..].trim_start();
    let after = rest[table_token_len(rest)..].trim_start();
    if after.starts_with(',') {
        return None;
    }
    Some(table)
}

/// The table name token starting at byte `at` (after spaces), unquoted.
fn single_table_at(text: &str, at: usize) -> Option<String> {
    let rest = text.get(at..)?.trim_start();
    let len = table_token_len(rest);
    if len == 0 {
        return None;
    }
    let name: String = rest[..len]
        .chars()
        .filter(|&c| c != '"' && c != '`')
        .collect();
    let first = name.chars().next()?;
    if !(first.is_alphabetic() || first == '_') || name.len() > MAX_COLLECTION_BYTES {
        return None;
    }
    Some(name)
}

/// Length of an (optionally schema-qualified, optionally quoted) table name.
fn table_token_len(s: &str) -> usize {
    let mut len = 0;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '`' => quote = Some(c),
            None if c.is_alphanumeric() || c == '_' || c == '.' || c == '$' => {}
            None => break,
        }
        len += c.len_utf8();
    }
    len
}

/// Byte offset of `keyword` as a whole word, case-insensitively.
fn find_keyword(text: &str, keyword: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let k = keyword.len();
    (0..=bytes.len().checked_sub(k)?).find(|&i| {
        bytes[i..i + k].eq_ignore_ascii_case(keyword.as_bytes())
            && (i == 0 || !is_ident_byte(bytes[i - 1]))
            && bytes.get(i + k).is_none_or(|&b| !is_ident_byte(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(s: &str) -> String {
        crate::fuzzing::seeds::input("sql", &[b"\x00", s.as_bytes()].concat());
        obfuscate(s.as_bytes(), Dialect::Postgres)
    }

    fn my(s: &str) -> String {
        crate::fuzzing::seeds::input("sql", &[b"\x01", s.as_bytes()].concat());
        obfuscate(s.as_bytes(), Dialect::Mysql)
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            pg("SELECT * FROM users WHERE email = 'a@b.c' AND id = 42"),
            "SELECT * FROM users WHERE email = ? AND id = ?"
        );
        assert_eq!(pg("select 'it''s', -1.5e3, .5, 0xFF"), "select ?, ?, ?, ?");
        assert_eq!(pg("SELECT E'a\\'b', $$x'y$$, $t$z$t$"), "SELECT ?, ?, ?");
        assert_eq!(
            pg("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        );
        assert_eq!(
            my("SELECT \"secret\", 'a\\'b', `col` FROM t"),
            "SELECT ?, ?, `col` FROM t"
        );
        assert_eq!(
            pg("SELECT \"Col\" FROM \"T\" WHERE x = 'v'"),
            "SELECT \"Col\" FROM \"T\" WHERE x = ?"
        );
        assert_eq!(pg("SELECT t1.c2 FROM t1"), "SELECT t1.c2 FROM t1");
        assert_eq!(
            pg("ALTER USER bob PASSWORD 'hunter2'"),
            "ALTER USER bob PASSWORD ?"
        );
    }

    #[test]
    fn lists_comments_and_space_collapse() {
        assert_eq!(
            pg("SELECT * FROM t WHERE id IN (1, 2,3 ,  4) -- trailing\n"),
            "SELECT * FROM t WHERE id IN (?)"
        );
        assert_eq!(
            pg("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3,'z');"),
            "INSERT INTO t (a, b) VALUES (?)"
        );
        assert_eq!(pg("/* app=1 */ SELECT\n\t1"), "SELECT ?");
        assert_eq!(my("SELECT 1 # note"), "SELECT ?");
        assert_eq!(pg("SELECT f(x, y) FROM t"), "SELECT f(x, y) FROM t");
    }

    #[test]
    fn operation_and_collection() {
        let s = normalize(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 7",
            Dialect::Postgres,
        );
        assert_eq!(s.operation, "SELECT");
        assert_eq!(s.collection.as_deref(), Some("pgbench_accounts"));
        let s = normalize(
            b"insert into public.\"Orders\" values (1)",
            Dialect::Postgres,
        );
        assert_eq!(s.operation, "INSERT");
        assert_eq!(s.collection.as_deref(), Some("public.Orders"));
        let s = normalize(b"UPDATE t SET a = 1", Dialect::Mysql);
        assert_eq!(s.collection.as_deref(), Some("t"));
        for two in [
            "SELECT * FROM a, b",
            "SELECT * FROM a JOIN b ON a.x = b.x",
            "SELECT * FROM (SELECT 1) s",
        ] {
            assert_eq!(
                normalize(two.as_bytes(), Dialect::Postgres).collection,
                None,
                "{two}"
            );
        }
        assert_eq!(normalize(b"BEGIN", Dialect::Postgres).operation, "BEGIN");
        assert_eq!(normalize(b"", Dialect::Postgres).operation, "_OTHER");
        assert_eq!(normalize(b"'x'", Dialect::Postgres).operation, "_OTHER");
    }

    #[test]
    fn truncated_and_garbage_input_never_panics() {
        for s in [
            &b"SELECT 'unterminated"[..],
            b"$tag$ open",
            b"/* open",
            b"\xff\xfe'\x00",
            b"0x",
            b"1e",
            b"E'",
            b"$",
            b"-",
        ] {
            let _ = normalize(s, Dialect::Postgres);
            let _ = normalize(s, Dialect::Mysql);
        }
        let long = "SELECT ".to_owned() + &"a, ".repeat(2000);
        let out = pg(&long);
        assert!(out.len() <= MAX_QUERY_BYTES + 3);
        assert!(out.ends_with("..."));
        assert_eq!(pg("SELECT 'secret"), "SELECT ?");
        // One token copied whole that crosses the limit at the very end (found by fuzzing).
        for last in ["a".repeat(3000), format!("\"{}\"", "b".repeat(3000))] {
            let out = pg(&format!("SELECT {last}"));
            assert_eq!(out.len(), MAX_QUERY_BYTES + 3, "{out}");
            assert!(out.ends_with("..."));
        }
        let exact = "SELECT ".to_owned() + &"c".repeat(MAX_QUERY_BYTES - 7);
        assert_eq!(pg(&exact), exact);
    }
}
