//! URL path -> route template (`/users/42/orders` -> `/users/{id}/orders`), and the
//! per-service route table whose size is capped: once the budget is spent, new routes land in
//! one overflow route and the overflow is counted.
use std::collections::HashMap;

/// Route given to requests of a service whose route budget is spent.
pub const OVERFLOW_ROUTE: &str = "/{overflow}";
/// Placeholder for identifier segments.
const ID: &str = "{id}";
/// A segment this long is an identifier or a blob, never a route name.
const LONG_SEGMENT: usize = 48;

/// Writes the template of `path` into `out` (reused between calls: no allocation once warm).
pub fn template_into(path: &str, out: &mut String) {
    out.clear();
    if !path.starts_with('/') {
        out.push_str(if path.is_empty() { "/" } else { path });
        return;
    }
    for segment in path.split('/').skip(1) {
        out.push('/');
        out.push_str(if is_identifier(segment) { ID } else { segment });
    }
}

/// Does this path segment look like an identifier rather than part of a route name?
fn is_identifier(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.len() >= LONG_SEGMENT {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    // 42, 2024-01-31, 1.5, 10:30
    if digits > 0
        && b.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'.' | b':' | b'_' | b','))
    {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    // Hashes and object ids: long hex strings with at least one digit.
    if b.len() >= 16 && digits > 0 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // ULIDs, base64 ids, prefixed keys (`ord_8fK2...`): long tokens mixing letters and digits.
    b.len() >= 20
        && digits >= 2
        && letters >= 1
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
}

/// 8-4-4-4-12 hexadecimal.
fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Interned route templates of one service, capped at a budget.
#[derive(Debug)]
pub struct RouteTable {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
    budget: usize,
    overflowed: u64,
}

/// Route id of [`OVERFLOW_ROUTE`] in every table.
pub const OVERFLOW_ID: u32 = 0;

impl RouteTable {
    pub fn new(budget: usize) -> Self {
        Self::with_overflow_name(budget, OVERFLOW_ROUTE)
    }

    /// A table whose overflow entry (id [`OVERFLOW_ID`]) is called `overflow` (the same
    /// interning serves other names than routes, e.g. normalized statements).
    pub fn with_overflow_name(budget: usize, overflow: &str) -> Self {
        Self {
            ids: HashMap::new(),
            names: vec![overflow.into()],
            budget,
            overflowed: 0,
        }
    }

    /// The id of `route`, adding it while the budget lasts, else [`OVERFLOW_ID`] (counted).
    pub fn intern(&mut self, route: &str) -> u32 {
        if let Some(&id) = self.ids.get(route) {
            return id;
        }
        if self.ids.len() >= self.budget {
            self.overflowed += 1;
            return OVERFLOW_ID;
        }
        let id = self.names.len() as u32;
        self.names.push(route.into());
        self.ids.insert(route.into(), id);
        id
    }

    pub fn name(&self, id: u32) -> &str {
        match self.names.get(id as usize) {
            Some(n) => n,
            None => &self.names[0],
        }
    }

    /// Requests that found the budget spent.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(path: &str) -> String {
        let mut out = String::new();
        template_into(path, &mut out);
        out
    }

    #[test]
    fn identifiers_become_placeholders() {
        let cases = [
            ("/users/42/orders", "/users/{id}/orders"),
            ("/users/42/orders/", "/users/{id}/orders/"),
            ("/", "/"),
            ("", "/"),
            ("*", "*"),
            ("/api/v1/items", "/api/v1/items"),
            ("/o/123e4567-e89b-12d3-a456-426614174000", "/o/{id}"),
            ("/blob/9f86d081884c7d659a2feaa0c55ad015", "/blob/{id}"),
            ("/k/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/k/{id}"),
            ("/day/2024-01-31/summary", "/day/{id}/summary"),
            ("/static/app.css", "/static/app.css"),
            ("/deadbeef", "/deadbeef"),
            ("/cafebabe12345678", "/{id}"),
            ("/health", "/health"),
            (&format!("/t/{}", "x".repeat(60)), "/t/{id}"),
        ];
        for (path, want) in cases {
            assert_eq!(template(path), want, "path {path}");
        }
    }

    #[test]
    fn budget_spills_into_the_overflow_route() {
        let mut t = RouteTable::new(2);
        let a = t.intern("/a");
        let b = t.intern("/b");
        assert_ne!(a, b);
        assert_eq!(t.intern("/a"), a);
        assert_eq!(t.intern("/c"), OVERFLOW_ID);
        assert_eq!(t.intern("/d"), OVERFLOW_ID);
        assert_eq!(t.name(OVERFLOW_ID), OVERFLOW_ROUTE);
        assert_eq!(t.name(a), "/a");
        assert_eq!(t.overflowed(), 2);
    }
}
