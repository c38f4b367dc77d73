//! Who may sign in through a provider, as what username, with which roles:
//! the provider's claims read against its `[[sso.providers]]` rules. Pure
//! functions, checked at every sign-in and every re-check.

use serde_json::Value;

/// What a provider says of a person (the ID token, and userinfo when asked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub subject: String,
    pub email: Option<String>,
    /// `email_verified`; absent counts as not verified.
    pub email_verified: bool,
    /// Google's `hd`: the Workspace domain the account belongs to.
    pub hosted_domain: Option<String>,
    pub groups: Vec<String>,
    /// The groups claim was sent at all (a token without it says nothing
    /// of the groups: on a re-check, the roles then stay).
    pub groups_sent: bool,
    /// The claim named by `username_claim` (the address by default).
    pub username: Option<String>,
}

impl Claims {
    /// Reads the claims Gatehouse uses out of a JSON object of claims.
    pub fn from_json(subject: &str, all: &serde_json::Map<String, Value>, rules: &Rules) -> Claims {
        let text = |name: &str| all.get(name).and_then(Value::as_str).map(str::to_string);
        let email_verified = match all.get("email_verified") {
            Some(Value::Bool(b)) => *b,
            // Some providers send the boolean as a string.
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        let groups_sent = all.contains_key(&rules.groups_claim);
        let groups = match all.get(&rules.groups_claim) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Claims {
            subject: subject.to_string(),
            email: text("email"),
            email_verified,
            hosted_domain: text("hd"),
            groups,
            groups_sent,
            username: text(&rules.username_claim),
        }
    }
}

/// One line of the role mapping: people in `group` get `roles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapping {
    pub group: String,
    pub roles: Vec<String>,
}

/// A provider's sign-in rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Addresses in these domains (exactly, lowercase) may sign in; empty: any.
    pub allowed_domains: Vec<String>,
    /// Google Workspace: the `hd` claim must be this domain.
    pub hosted_domain: Option<String>,
    /// People in at least one of these groups may sign in; empty: any.
    pub allowed_groups: Vec<String>,
    /// The claim that lists groups (`groups`; Keycloak and Okta can be set
    /// to send it, Entra sends group ids there).
    pub groups_claim: String,
    /// The claim a new user's username comes from (else the address's local part).
    pub username_claim: String,
    /// Take an address the provider has not verified (for providers that
    /// never send `email_verified`, like Entra ID); off by default.
    pub trust_unverified_email: bool,
    pub roles: Vec<RoleMapping>,
    /// Roles everyone who signs in through this provider gets.
    pub default_roles: Vec<String>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            allowed_domains: Vec::new(),
            hosted_domain: None,
            allowed_groups: Vec::new(),
            groups_claim: "groups".into(),
            username_claim: "email".into(),
            trust_unverified_email: false,
            roles: Vec::new(),
            default_roles: Vec::new(),
        }
    }
}

/// Why a person may not sign in: shown (in words) and audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No address, or one that is not an address.
    NoEmail,
    /// The provider has not verified the address.
    EmailUnverified,
    /// The address's domain is not allowed.
    Domain,
    /// Google's `hd` is not the configured domain.
    HostedDomain,
    /// In none of the allowed groups.
    Group,
    /// No username can be made from the claims.
    NoUsername,
}

impl Refusal {
    /// The reason as the audit log names it.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::NoEmail => "no email address",
            Refusal::EmailUnverified => "email address not verified by the provider",
            Refusal::Domain => "email domain not allowed",
            Refusal::HostedDomain => "hosted domain (hd) not allowed",
            Refusal::Group => "in none of the allowed groups",
            Refusal::NoUsername => "no usable username",
        }
    }
}

impl Rules {
    /// The person's address, if they may sign in; else why not.
    pub fn admit(&self, c: &Claims) -> Result<String, Refusal> {
        let email = c.email.as_deref().map(str::trim).filter(|e| !e.is_empty()).ok_or(Refusal::NoEmail)?;
        if gatehouse_domain::users::validate_email(email).is_err() {
            return Err(Refusal::NoEmail);
        }
        if !c.email_verified && !self.trust_unverified_email {
            return Err(Refusal::EmailUnverified);
        }
        let domain = email.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        if !self.allowed_domains.is_empty() && !self.allowed_domains.contains(&domain) {
            return Err(Refusal::Domain);
        }
        if let Some(hd) = &self.hosted_domain {
            if c.hosted_domain.as_deref().map(str::to_ascii_lowercase).as_deref() != Some(hd.as_str()) {
                return Err(Refusal::HostedDomain);
            }
        }
        if !self.allowed_groups.is_empty() && !c.groups.iter().any(|g| self.allowed_groups.contains(g)) {
            return Err(Refusal::Group);
        }
        Ok(email.to_string())
    }

    /// The roles the mapping grants: the defaults, then each mapped
    /// group's, without repeats, in that order.
    pub fn roles(&self, c: &Claims) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mapped = self.roles.iter().filter(|m| c.groups.contains(&m.group)).flat_map(|m| m.roles.iter());
        for r in self.default_roles.iter().chain(mapped) {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }

    /// A username for a new user: the username claim, else the address's
    /// local part, lowercased, with characters a username cannot hold
    /// turned into `-`. `None` if that leaves no valid username.
    pub fn username(&self, c: &Claims, email: &str) -> Option<String> {
        let from = |raw: &str| {
            let raw = raw.split('@').next().unwrap_or("").to_lowercase();
            let mapped: String = raw
                .chars()
                .map(|ch| if ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch) { ch } else { '-' })
                .collect();
            let name = mapped.trim_start_matches(['.', '_', '-']).chars().take(64).collect::<String>();
            gatehouse_domain::users::validate_username(&name).is_ok().then_some(name)
        };
        c.username.as_deref().and_then(from).or_else(|| from(email))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> Claims {
        Claims {
            subject: "u-1".into(),
            email: Some("Ann@Example.com".into()),
            email_verified: true,
            hosted_domain: Some("example.com".into()),
            groups: vec!["eng".into(), "ops".into()],
            groups_sent: true,
            username: Some("ann".into()),
        }
    }

    #[test]
    fn domains_groups_and_verification_decide_who_signs_in() {
        let open = Rules::default();
        assert_eq!(open.admit(&ann()), Ok("Ann@Example.com".into()));
        let company = Rules {
            allowed_domains: vec!["example.com".into()],
            hosted_domain: Some("example.com".into()),
            allowed_groups: vec!["ops".into()],
            ..Default::default()
        };
        assert!(company.admit(&ann()).is_ok());
        let cases = [
            (Claims { email: None, ..ann() }, Refusal::NoEmail),
            (Claims { email: Some("not an address".into()), ..ann() }, Refusal::NoEmail),
            (Claims { email_verified: false, ..ann() }, Refusal::EmailUnverified),
            (Claims { email: Some("ann@example.com.evil.com".into()), ..ann() }, Refusal::Domain),
            (Claims { email: Some("ann@sub.example.com".into()), ..ann() }, Refusal::Domain),
            (Claims { hosted_domain: None, ..ann() }, Refusal::HostedDomain),
            (Claims { hosted_domain: Some("gmail.com".into()), ..ann() }, Refusal::HostedDomain),
            (Claims { groups: vec!["eng".into()], ..ann() }, Refusal::Group),
        ];
        for (claims, why) in cases {
            assert_eq!(company.admit(&claims), Err(why), "{claims:?}");
        }
        let trusting = Rules { trust_unverified_email: true, ..Default::default() };
        assert!(trusting.admit(&Claims { email_verified: false, ..ann() }).is_ok());
    }

    #[test]
    fn the_mapping_grants_defaults_and_groups_once_each() {
        let rules = Rules {
            default_roles: vec!["viewer".into()],
            roles: vec![
                RoleMapping { group: "ops".into(), roles: vec!["operator".into(), "viewer".into()] },
                RoleMapping { group: "admins".into(), roles: vec!["admin".into()] },
            ],
            ..Default::default()
        };
        assert_eq!(rules.roles(&ann()), vec!["viewer".to_string(), "operator".to_string()]);
        assert_eq!(rules.roles(&Claims { groups: vec![], ..ann() }), vec!["viewer".to_string()]);
    }

    #[test]
    fn usernames_come_from_the_claim_or_the_address() {
        let r = Rules::default();
        assert_eq!(r.username(&ann(), "x@example.com").as_deref(), Some("ann"));
        let odd = Claims { username: Some("Ann Smith (Ops)".into()), ..ann() };
        assert_eq!(r.username(&odd, "x@example.com").as_deref(), Some("ann-smith--ops-"));
        let none = Claims { username: None, ..ann() };
        assert_eq!(r.username(&none, "Ann.Smith+x@example.com").as_deref(), Some("ann.smith-x"));
        let unusable = Claims { username: Some("é".into()), ..ann() };
        assert_eq!(r.username(&unusable, "é@example.com"), None);
        // A username claim that is an address takes its local part.
        let upn = Claims { username: Some("ann@corp.example.com".into()), ..ann() };
        assert_eq!(r.username(&upn, "x@example.com").as_deref(), Some("ann"));
    }

    #[test]
    fn claims_are_read_from_json_strictly() {
        let json = serde_json::json!({
            "email": "a@example.com", "email_verified": "true", "hd": "example.com",
            "roles": ["x", 3, "y"], "preferred_username": "a"
        });
        let rules = Rules { groups_claim: "roles".into(), ..Default::default() };
        let c = Claims::from_json("s", json.as_object().unwrap(), &rules);
        assert!(c.email_verified);
        assert_eq!(c.groups, vec!["x".to_string(), "y".to_string()]);
        let c = Claims::from_json("s", serde_json::json!({"email_verified": 1}).as_object().unwrap(), &rules);
        assert!(!c.email_verified && c.groups.is_empty() && c.email.is_none() && !c.groups_sent);
    }
}
