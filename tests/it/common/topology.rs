//! The one way a test writes a topology file: a [`Topology`] of top-level tables (`[broker]`,
//! `[admin]`, `[zookeeper]`, …), [`Group`]s of [`Member`]s with their listeners, connectors and
//! whole extra tables, rendered to TOML text in one fixed order — `[mesh]`, the tables, the
//! groups, the connectors, the extra tables — so a test that edits the written file (adds a
//! listener line, cuts a group out) finds what it looks for. Every harness builder
//! ([`super::Config`], [`super::MeshConfig`], [`super::mesh::MeshBuilder`],
//! [`super::pair::file_lock_pair`], [`super::ha::HaGroup`], [`super::ws_mesh::mesh`]) writes
//! through it; it picks no ports and starts nothing.
//!
//! Keys are written as the test gives them (`key = value` lines): the real parser
//! (`meshmq check`, `meshmq::config::load`) is what judges them, and the harness self-test
//! (`harness_writes_topologies_the_parser_takes`) holds every builder to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A whole topology file.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The `[mesh]` table, as text.
    mesh: String,
    /// Top-level tables in the order first named, each with its `key = value` lines.
    tables: Vec<(String, Vec<String>)>,
    groups: Vec<Group>,
    connectors: Vec<Connector>,
    /// Whole tables appended as written (e.g. `[[policy]]`, `[security]`).
    sections: Vec<String>,
}

impl Topology {
    /// Mesh `name`, whose bridges prove themselves with the tests' [`super::MESH_SECRET`].
    pub fn new(name: &str) -> Topology {
        Topology::with_mesh_table(&super::mesh_table(name))
    }

    /// Mesh `name` with no secret (a mesh with no connectors needs none).
    pub fn without_secret(name: &str) -> Topology {
        Topology::with_mesh_table(&format!("[mesh]\nname = \"{name}\"\n"))
    }

    /// A topology whose `[mesh]` table is `table`, as written.
    pub fn with_mesh_table(table: &str) -> Topology {
        Topology {
            mesh: table.to_string(),
            tables: Vec::new(),
            groups: Vec::new(),
            connectors: Vec::new(),
            sections: Vec::new(),
        }
    }

    /// Adds `lines` to the `[mesh]` table.
    pub fn mesh_lines(mut self, lines: &[&str]) -> Topology {
        push_lines(
            &mut self.mesh,
            &lines.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        );
        self
    }

    /// Adds `lines` to the top-level table `[name]`, which is written (even empty) once named.
    pub fn table(mut self, name: &str, lines: &[&str]) -> Topology {
        let at = match self.tables.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                self.tables.push((name.to_string(), Vec::new()));
                self.tables.len() - 1
            }
        };
        self.tables[at]
            .1
            .extend(lines.iter().map(|l| l.to_string()));
        self
    }

    pub fn group(mut self, group: Group) -> Topology {
        self.groups.push(group);
        self
    }

    pub fn groups(mut self, groups: impl IntoIterator<Item = Group>) -> Topology {
        self.groups.extend(groups);
        self
    }

    /// A `[[connector]]` from group `from` to group `to` with `lines` (e.g. `duplex = true`).
    pub fn connector(mut self, from: &str, to: &str, lines: &[&str]) -> Topology {
        self.connectors.push(Connector::new(from, to, lines));
        self
    }

    pub fn connectors(mut self, connectors: impl IntoIterator<Item = Connector>) -> Topology {
        self.connectors.extend(connectors);
        self
    }

    /// Whole tables appended as written, after the connectors.
    pub fn section(mut self, text: &str) -> Topology {
        self.sections.push(text.to_string());
        self
    }

    /// The group named `name`.
    pub fn group_mut(&mut self, name: &str) -> &mut Group {
        self.groups
            .iter_mut()
            .find(|g| g.name == name)
            .unwrap_or_else(|| panic!("no group {name} in this topology"))
    }

    /// The same topology without group `name` and the connectors to or from it.
    pub fn without_group(mut self, name: &str) -> Topology {
        self.groups.retain(|g| g.name != name);
        self.connectors.retain(|c| c.from != name && c.to != name);
        self
    }

    /// The same topology without the connector from `from` to `to`.
    pub fn without_connector(mut self, from: &str, to: &str) -> Topology {
        self.connectors.retain(|c| c.from != from || c.to != to);
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        let mut t = self.mesh.clone();
        for (name, lines) in &self.tables {
            t.push_str(&format!("\n[{name}]\n"));
            push_lines(&mut t, lines);
        }
        for g in &self.groups {
            g.render(&mut t);
        }
        for c in &self.connectors {
            c.render(&mut t);
        }
        for s in &self.sections {
            t.push('\n');
            t.push_str(s);
            t.push('\n');
        }
        t
    }

    /// Writes the text as `name` into `dir`; returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        super::write_file(dir, name, &self.text())
    }
}

fn push_lines(t: &mut String, lines: &[String]) {
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        t.push_str(line);
        if !line.ends_with('\n') {
            t.push('\n');
        }
    }
}

/// One `[[group]]`.
#[derive(Debug, Clone)]
pub struct Group {
    name: String,
    /// Lines of the `[[group]]` table itself (`election`, `sync`, …).
    lines: Vec<String>,
    /// Lines of its `[group.broker]` section (written only when there are some).
    broker: Vec<String>,
    members: Vec<Member>,
}

impl Group {
    pub fn new(name: &str) -> Group {
        Group {
            name: name.to_string(),
            lines: Vec::new(),
            broker: Vec::new(),
            members: Vec::new(),
        }
    }

    /// A file-lock group: its members share `shared_dir` (relative to the topology's
    /// directory unless absolute) and try the lock every `lock_poll`.
    pub fn file_lock(name: &str, shared_dir: &str, lock_poll: &str) -> Group {
        Group::new(name).lines(&[
            "election = \"file-lock\"",
            &format!("shared_dir = \"{shared_dir}\""),
            &format!("lock_poll = \"{lock_poll}\""),
        ])
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `key = value` lines of the `[[group]]` table.
    pub fn lines(mut self, lines: &[&str]) -> Group {
        self.lines.extend(lines.iter().map(|l| l.to_string()));
        self
    }

    /// A `key = value` line of the group's `[group.broker]` section.
    pub fn broker(mut self, line: &str) -> Group {
        self.broker.push(line.to_string());
        self
    }

    pub fn member(mut self, member: Member) -> Group {
        self.members.push(member);
        self
    }

    pub fn members(mut self, members: impl IntoIterator<Item = Member>) -> Group {
        self.members.extend(members);
        self
    }

    fn render(&self, t: &mut String) {
        t.push_str(&format!("\n[[group]]\nname = \"{}\"\n", self.name));
        push_lines(t, &self.lines);
        if !self.broker.is_empty() {
            t.push_str("[group.broker]\n");
            push_lines(t, &self.broker);
        }
        for m in &self.members {
            m.render(t);
        }
    }
}

/// One `[[group.member]]` with its listeners.
#[derive(Debug, Clone)]
pub struct Member {
    name: String,
    admin: SocketAddr,
    /// Lines of the member's table (`data_dir`, `bind`, `weight`, `replication`, …).
    lines: Vec<String>,
    listeners: Vec<Listener>,
}

impl Member {
    /// Member `name` with its admin HTTP port at `admin`.
    pub fn new(name: &str, admin: SocketAddr) -> Member {
        Member {
            name: name.to_string(),
            admin,
            lines: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// `key = value` lines of the member's table.
    pub fn lines(mut self, lines: &[&str]) -> Member {
        self.lines.extend(lines.iter().map(|l| l.to_string()));
        self
    }

    /// Its `data_dir` (relative to the topology's directory unless absolute).
    pub fn data_dir(self, dir: impl AsRef<Path>) -> Member {
        let line = format!("data_dir = {:?}", dir.as_ref().display().to_string());
        self.lines(&[&line])
    }

    /// A `[[group.member.listener]]` on `url` with `lines` (e.g. `max_connections = 2`).
    pub fn listener(mut self, url: &str, lines: &[&str]) -> Member {
        self.listeners.push(Listener {
            url: url.to_string(),
            lines: lines.iter().map(|l| l.to_string()).collect(),
        });
        self
    }

    /// A native listener at `tcp://addr`.
    pub fn tcp(self, addr: SocketAddr) -> Member {
        self.listener(&format!("tcp://{addr}"), &[])
    }

    fn render(&self, t: &mut String) {
        t.push_str(&format!(
            "\n[[group.member]]\nname = \"{}\"\nadmin = \"{}\"\n",
            self.name, self.admin
        ));
        push_lines(t, &self.lines);
        for l in &self.listeners {
            t.push_str(&format!("[[group.member.listener]]\nurl = \"{}\"\n", l.url));
            push_lines(t, &l.lines);
        }
    }
}

#[derive(Debug, Clone)]
struct Listener {
    url: String,
    lines: Vec<String>,
}

/// One `[[connector]]`.
#[derive(Debug, Clone)]
pub struct Connector {
    from: String,
    to: String,
    lines: Vec<String>,
}

/// The re-dial pace of the harness's connectors: 100 ms, backing off to at most 1 s (tests
/// wait less than the broker's defaults).
pub const QUICK_REDIAL: [&str; 2] = [
    "reconnect_initial_delay = \"100ms\"",
    "reconnect_max_delay = \"1s\"",
];

impl Connector {
    pub fn new(from: &str, to: &str, lines: &[&str]) -> Connector {
        Connector {
            from: from.to_string(),
            to: to.to_string(),
            lines: lines.iter().map(|l| l.to_string()).collect(),
        }
    }

    /// Adds each of `lines` whose key the connector does not set yet.
    pub fn or_lines(mut self, lines: &[&str]) -> Connector {
        for line in lines {
            let key = line.split('=').next().unwrap_or_default().trim();
            if !self
                .lines
                .iter()
                .any(|l| l.split('=').next().unwrap_or_default().trim() == key)
            {
                self.lines.push(line.to_string());
            }
        }
        self
    }

    fn render(&self, t: &mut String) {
        t.push_str(&format!(
            "\n[[connector]]\nfrom = \"{}\"\nto = \"{}\"\n",
            self.from, self.to
        ));
        push_lines(t, &self.lines);
    }
}

/// A `[security]` table with `allow_anonymous` and one `[[security.user]]` per `(name,
/// password)`, each password written as its hash (appended with [`Topology::section`]).
pub fn security(allow_anonymous: bool, users: &[(&str, &str)]) -> String {
    let mut t = format!("[security]\nallow_anonymous = {allow_anonymous}\n");
    for (name, password) in users {
        t.push_str(&format!(
            "\n[[security.user]]\nname = \"{name}\"\npassword_hash = \"{}\"\n",
            meshmq::security::hash_password(password)
        ));
    }
    t
}
