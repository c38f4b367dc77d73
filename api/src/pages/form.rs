//! A posted form (`application/x-www-form-urlencoded`), read strictly: the
//! fields a page expects, each at most once and within its length; anything
//! else refuses the form (a field sent twice could be read two ways).

use std::collections::HashMap;

/// The fields of `body`, when every one is among `expected` (name, longest
/// value in bytes) and none is repeated. Missing fields read as empty.
pub fn fields(body: &[u8], expected: &[(&'static str, usize)]) -> Option<HashMap<&'static str, String>> {
    let mut out: HashMap<&'static str, String> = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        let &(known, max) = expected.iter().find(|(n, _)| *n == name)?;
        if value.len() > max || value.chars().any(|c| c.is_control() && c != '\t') {
            return None;
        }
        if out.insert(known, value.into_owned()).is_some() {
            return None;
        }
    }
    for (name, _) in expected {
        out.entry(name).or_default();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGIN: &[(&str, usize)] = &[("csrf", 64), ("username", 8), ("password", 16)];

    #[test]
    fn a_form_has_the_expected_fields_once_each() {
        let f = fields(b"csrf=ab&username=ann%20b&password=p%26w", LOGIN).unwrap();
        assert_eq!((f["csrf"].as_str(), f["username"].as_str(), f["password"].as_str()), ("ab", "ann b", "p&w"));
        assert_eq!(fields(b"csrf=ab", LOGIN).unwrap()["password"], "", "missing reads as empty");
        for bad in
            [&b"csrf=ab&csrf=cd"[..], b"csrf=ab&admin=1", b"username=123456789", b"username=a%00b", b"username=a%0Ab"]
        {
            assert!(fields(bad, LOGIN).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
