//! `[security]`: users and their password hashes, ACLs.

use super::*;

impl Checker<'_> {
    pub(super) fn security(&mut self, raw: Option<&RawSecurity>) -> Security {
        let Some(raw) = raw else {
            return Security {
                allow_anonymous: true,
                users: Vec::new(),
                acls: Vec::new(),
            };
        };
        let names: Vec<Option<&str>> = raw.user.iter().map(|u| u.name.as_deref()).collect();
        let user_labels = labels(&names);
        let mut users = Vec::new();
        for (i, u) in raw.user.iter().enumerate() {
            let at = format!("security.user[{}]", user_labels[i]);
            let first = names[..i]
                .iter()
                .position(|n| n.is_some() && *n == names[i]);
            if let (Some(first), Some(name)) = (first, names[i]) {
                self.refuse(
                    &format!("{at}.name"),
                    format!(
                        "{name:?} is also the name of security.user[{}]",
                        user_labels[first]
                    ),
                    "give each user a different name",
                );
            }
            users.extend(self.user(&at, u));
        }
        let held: BTreeSet<&str> = raw
            .user
            .iter()
            .flat_map(|u| u.groups.iter().map(String::as_str))
            .collect();
        let acls = raw
            .acl
            .iter()
            .enumerate()
            .filter_map(|(i, acl)| self.acl(&format!("security.acl[{i}]"), acl, &held))
            .collect();
        Security {
            allow_anonymous: raw.allow_anonymous.unwrap_or(raw.user.is_empty()),
            users,
            acls,
        }
    }

    fn user(&mut self, at: &str, raw: &RawUser) -> Option<User> {
        let name = self.required(
            &format!("{at}.name"),
            raw.name.as_deref(),
            "name the user, e.g. name = \"alice\"",
        );
        if let Some(name) = name {
            if name.is_empty()
                || name.len() > 128
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ':')
            {
                self.refuse(
                    &format!("{at}.name"),
                    format!("{name:?} is not a valid user name"),
                    "use 1 to 128 characters without spaces or ':', e.g. \"alice\"",
                );
            }
        }
        for (i, group) in raw.groups.iter().enumerate() {
            if !is_valid_name(group) {
                self.refuse(
                    &format!("{at}.groups[{i}]"),
                    format!("{group:?} is not a valid security group name"),
                    NAME_FIX,
                );
            }
        }
        let hash_key = format!("{at}.password_hash");
        let hash = self.required(&hash_key, raw.password_hash.as_deref(), PASSWD_FIX);
        let hash_ok = hash.is_some_and(|h| match check_password_hash(h) {
            Ok(()) => true,
            Err(problem) => {
                self.refuse(&hash_key, problem, PASSWD_FIX);
                false
            }
        });
        if !hash_ok {
            return None;
        }
        Some(User {
            name: name?.to_string(),
            password_hash: hash?.to_string(),
            groups: raw.groups.clone(),
        })
    }

    fn acl(&mut self, at: &str, raw: &RawAcl, held: &BTreeSet<&str>) -> Option<Acl> {
        let destination = self
            .required(
                &format!("{at}.destination"),
                raw.destination.as_deref(),
                "write the destinations it guards, e.g. destination = \"queue://orders.>\"",
            )
            .and_then(|text| self.pattern(&format!("{at}.destination"), text));
        for (list, groups) in [
            ("read", &raw.read),
            ("write", &raw.write),
            ("admin", &raw.admin),
        ] {
            for (i, group) in groups.iter().enumerate() {
                if held.contains(group.as_str()) {
                    continue;
                }
                let fix = if held.is_empty() {
                    format!("no user is defined: add a [[security.user]] with groups = [{group:?}]")
                } else {
                    let in_use: Vec<&str> = held.iter().copied().collect();
                    format!(
                        "add {group:?} to some user's groups, or fix the name (groups in use: {})",
                        in_use.join(", ")
                    )
                };
                self.refuse(
                    &format!("{at}.{list}[{i}]"),
                    format!("names security group {group:?}, which no user belongs to"),
                    fix,
                );
            }
        }
        Some(Acl {
            destination: destination?,
            read: raw.read.clone(),
            write: raw.write.clone(),
            admin: raw.admin.clone(),
        })
    }
}

/// Accepts an argon2 PHC string; the error never repeats the value (it may be a password).
pub(super) fn check_password_hash(text: &str) -> Result<(), String> {
    if !text.starts_with('$') {
        return Err("is not a password hash (it looks like a plaintext password, which must never be stored)".to_string());
    }
    let hash = argon2::PasswordHash::new(text)
        .map_err(|e| format!("is not a valid PHC hash string ({e})"))?;
    let algorithm = hash.algorithm.as_str();
    if !matches!(algorithm, "argon2id" | "argon2i" | "argon2d") {
        return Err(format!("uses algorithm {algorithm:?}, but only argon2 hashes (argon2id, argon2i, argon2d) are accepted"));
    }
    argon2::Params::try_from(&hash).map_err(|e| format!("has invalid argon2 parameters ({e})"))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("has no salt or no hash part".to_string());
    }
    Ok(())
}
