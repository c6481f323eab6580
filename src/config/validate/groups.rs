//! `[zookeeper]` and `[[group]]`: elections, members, listeners and their TLS files, and the
//! addresses and directories no two members may share.

use super::*;

impl Checker<'_> {
    pub(super) fn zookeeper(
        &mut self,
        raw: Option<&RawZooKeeper>,
        groups: &[RawGroup],
    ) -> Option<ZooKeeperOptions> {
        let group_names: Vec<Option<&str>> = groups.iter().map(|g| g.name.as_deref()).collect();
        let group_labels = labels(&group_names);
        let zookeeper_group = groups
            .iter()
            .position(|g| g.election.as_deref() == Some(Election::ZooKeeper.as_str()));
        let Some(raw) = raw else {
            if let Some(i) = zookeeper_group {
                self.refuse(
                    "zookeeper",
                    format!(
                        "is missing, but group[{}] has election = \"zookeeper\"",
                        group_labels[i]
                    ),
                    "add a [zookeeper] section with connect = \"127.0.0.1:2181\"",
                );
            }
            return None;
        };
        if zookeeper_group.is_none() {
            self.refuse(
                "zookeeper",
                "is set, but no group has election = \"zookeeper\"",
                "remove the [zookeeper] section, or set election = \"zookeeper\" on a replicated group",
            );
        }
        let connect_fix =
            "list the ZooKeeper servers, e.g. connect = \"127.0.0.1:2181,127.0.0.1:2182\"";
        let connect = self
            .required("zookeeper.connect", raw.connect.as_deref(), connect_fix)
            .map(|text| {
                let mut servers = Vec::new();
                for entry in text.split(',').map(str::trim) {
                    if entry.is_empty() {
                        self.refuse(
                            "zookeeper.connect",
                            format!("{text:?} has an empty entry"),
                            connect_fix,
                        );
                        continue;
                    }
                    servers.extend(self.parsed(
                        "zookeeper.connect",
                        parse_host_port(entry, "127.0.0.1:2181"),
                    ));
                }
                servers
            });
        let root = raw.root.clone().unwrap_or_else(|| "/meshmq".to_string());
        if !root.starts_with('/')
            || (root.len() > 1 && root.ends_with('/'))
            || root == "/"
            || root.contains("//")
        {
            self.refuse(
                "zookeeper.root",
                format!("{root:?} is not a znode path"),
                "write an absolute path without a trailing '/', e.g. root = \"/meshmq\"",
            );
        }
        let digest = raw.digest.as_deref().and_then(|d| match d.split_once(':') {
            Some((user, _)) if !user.is_empty() => Some(Secret::new(d.to_string())),
            _ => {
                // The value is a credential: name the shape, never echo it.
                self.refuse(
                    "zookeeper.digest",
                    "is not written user:password",
                    "write digest = \"USER:PASSWORD\"",
                );
                None
            }
        });
        let session_timeout = self
            .duration(
                "zookeeper.session_timeout",
                raw.session_timeout.as_deref(),
                Zero::Refused,
            )
            .unwrap_or(Duration::from_secs(2));
        Some(ZooKeeperOptions {
            connect: connect?,
            session_timeout,
            root,
            digest,
        })
    }

    pub(super) fn groups(&mut self, raw: &[RawGroup], broker: &BrokerPolicy) -> Vec<Option<Group>> {
        let names: Vec<Option<&str>> = raw.iter().map(|g| g.name.as_deref()).collect();
        let group_labels = labels(&names);
        if raw.is_empty() {
            self.refuse(
                "group",
                "is missing: a mesh needs at least one group",
                "add a [[group]] with a [[group.member]] and its [[group.member.listener]]",
            );
        }
        // Member names are unique across the mesh, so their labels are computed mesh-wide.
        let member_names: Vec<Option<&str>> = raw
            .iter()
            .flat_map(|g| g.member.iter().map(|m| m.name.as_deref()))
            .collect();
        let member_labels = name_labels(&member_names);
        let cluster_updates_on = raw
            .iter()
            .flat_map(|g| &g.member)
            .flat_map(|m| &m.listener)
            .any(|l| {
                l.update_cluster_clients == Some(true) || l.rebalance_cluster_clients == Some(true)
            });

        let mut addresses: Vec<(SocketAddr, Claim)> = Vec::new();
        let mut directories: Vec<Directory> = Vec::new();
        let mut groups = Vec::new();
        let mut member_index = 0;
        for (gi, g) in raw.iter().enumerate() {
            let at = format!("group[{}]", group_labels[gi]);
            if let Some(first) = names[..gi]
                .iter()
                .position(|n| n.is_some() && *n == names[gi])
            {
                self.refuse(
                    &format!("{at}.name"),
                    format!(
                        "{:?} is also the name of group[{}]",
                        names[gi].unwrap_or_default(),
                        group_labels[first]
                    ),
                    "give each group a different name",
                );
            }
            let name = self
                .required(
                    &format!("{at}.name"),
                    g.name.as_deref(),
                    "name the group, e.g. name = \"hub\"",
                )
                .and_then(|n| self.name(&format!("{at}.name"), n, GroupName::parse));
            let election = self
                .keyword(
                    &format!("{at}.election"),
                    g.election.as_deref(),
                    Election::parse,
                    Election::choices(),
                    "none",
                )
                .unwrap_or(Election::None);
            let mut members = Vec::new();
            let mut all_members_ok = true;
            for (mi, m) in g.member.iter().enumerate() {
                let name_unique = member_labels[member_index].is_some();
                let label = member_labels[member_index]
                    .clone()
                    .unwrap_or_else(|| mi.to_string());
                let member_at = format!("{at}.member[{label}]");
                if let Some(first) = member_names[..member_index]
                    .iter()
                    .position(|n| n.is_some() && *n == member_names[member_index])
                {
                    let (first_group, first_index) = locate(raw, first);
                    self.refuse(
                        &format!("{member_at}.name"),
                        format!(
                            "{:?} is also the name of group[{}].member[{first_index}]",
                            m.name.as_deref().unwrap_or_default(),
                            group_labels[first_group]
                        ),
                        "give each member of the mesh a different name",
                    );
                }
                let context = MemberContext {
                    at: &member_at,
                    index: member_index,
                    election,
                    name_unique,
                    cluster_updates_on,
                };
                let member = self.member(&context, m, &mut addresses, &mut directories);
                all_members_ok &= member.is_some();
                members.extend(member);
                member_index += 1;
            }
            let parts = GroupParts {
                name,
                election,
                members,
            };
            let group = self.group(&at, g, parts, broker, &mut directories);
            groups.push(group.filter(|_| all_members_ok));
        }
        self.address_clashes(&addresses);
        self.directory_clashes(&directories);
        groups
    }

    /// Every `update_cluster_filter` must admit the listener's own group and some group whose
    /// clients it could be told about (one with a native client listener): a filter that admits
    /// nothing of the kind would leave its clients nowhere to be sent or fail over to.
    pub(super) fn cluster_filters(&mut self, groups: &[Option<Group>]) {
        let groups: Vec<&Group> = groups.iter().flatten().collect();
        let with_clients: Vec<&str> = groups
            .iter()
            .filter(|g| {
                g.members
                    .iter()
                    .flat_map(|m| &m.listeners)
                    .any(|l| l.url.scheme.is_native())
            })
            .map(|g| g.name.as_str())
            .collect();
        for g in &groups {
            for m in &g.members {
                for (li, l) in m.listeners.iter().enumerate() {
                    if l.update_cluster_filter.is_empty() {
                        continue;
                    }
                    let admits =
                        |name: &str| l.update_cluster_filter.iter().any(|re| re.is_match(name));
                    let key = format!(
                        "group[{}].member[{}].listener[{li}].update_cluster_filter",
                        g.name.as_str(),
                        m.name.as_str()
                    );
                    let patterns: Vec<&str> = l
                        .update_cluster_filter
                        .iter()
                        .map(|re| {
                            let p = re.as_str();
                            p.strip_prefix("^(?:")
                                .and_then(|p| p.strip_suffix(")$"))
                                .unwrap_or(p)
                        })
                        .collect();
                    if !with_clients.iter().any(|n| admits(n)) {
                        self.refuse(
                            &key,
                            format!(
                                "{patterns:?} matches no group with a client listener (those are: {})",
                                with_clients.join(", ")
                            ),
                            "write regexes that match whole group names, e.g. [\"edge-.*\"]",
                        );
                    } else if !admits(g.name.as_str()) {
                        self.refuse(
                            &key,
                            format!(
                                "{patterns:?} leaves out this listener's own group \"{}\"",
                                g.name.as_str()
                            ),
                            format!(
                                "add a regex matching \"{}\": its clients are always told of their own group",
                                g.name.as_str()
                            ),
                        );
                    }
                }
            }
        }
    }

    fn group(
        &mut self,
        at: &str,
        g: &RawGroup,
        parts: GroupParts,
        broker: &BrokerPolicy,
        directories: &mut Vec<Directory>,
    ) -> Option<Group> {
        let GroupParts {
            name,
            election,
            members,
        } = parts;
        let key = |k: &str| format!("{at}.{k}");
        let count = g.member.len();
        if count == 0 {
            self.refuse(
                at,
                "has no members",
                "add a [[group.member]] with name, admin and a [[group.member.listener]]",
            );
        }
        let election_fix = "set election = \"file-lock\" (members share a store on one machine) or \"zookeeper\" (replicated), or give each member its own group";
        if election == Election::None && count > 1 {
            if g.election.is_some() {
                self.refuse(
                    &key("election"),
                    format!("\"none\" allows exactly one member, but the group has {count}"),
                    election_fix,
                );
            } else {
                self.refuse(at, format!("has {count} members, but election \"none\" (the default) allows exactly one"), election_fix);
            }
        }
        let max_replicas = i64::try_from(count.max(1)).unwrap_or(i64::MAX);
        let replicas = match g.replicas {
            Some(r) if r > max_replicas => {
                self.refuse(
                    &key("replicas"),
                    format!(
                        "is {r}, but the group has {count} member{}",
                        if count == 1 { "" } else { "s" }
                    ),
                    format!("set replicas to at most {count}, or add members"),
                );
                None
            }
            other => self.whole(&key("replicas"), other, 1, U32_MAX),
        }
        .unwrap_or(u32::try_from(count.max(1)).unwrap_or(u32::MAX));
        let default_sync = if election == Election::ZooKeeper {
            SyncMode::QuorumMem
        } else {
            SyncMode::LocalDisk
        };
        let sync = self
            .keyword(
                &key("sync"),
                g.sync.as_deref(),
                SyncMode::parse,
                SyncMode::choices(),
                "local_disk",
            )
            .unwrap_or(default_sync);
        if sync.needs_replicas() && election != Election::ZooKeeper {
            self.refuse(
                &key("sync"),
                format!("is \"{sync}\", which waits for replicas, and only election = \"zookeeper\" groups have them"),
                "use local_disk or local_mem, or set election = \"zookeeper\"",
            );
        }
        let quorum_timeout = self.duration(
            &key("quorum_timeout"),
            g.quorum_timeout.as_deref(),
            Zero::Refused,
        );
        if g.quorum_timeout.is_some() && election != Election::ZooKeeper {
            self.only_for(&key("quorum_timeout"), Election::ZooKeeper, election);
        }
        let lock_poll = self.duration(&key("lock_poll"), g.lock_poll.as_deref(), Zero::Refused);
        if g.lock_poll.is_some() && election != Election::FileLock {
            self.only_for(&key("lock_poll"), Election::FileLock, election);
        }
        let shared_dir = self.path(&key("shared_dir"), g.shared_dir.as_deref());
        match (&shared_dir, election) {
            (Some(dir), Election::FileLock) => directories.push(Directory {
                path: dir.clone(),
                text: g.shared_dir.clone().unwrap_or_default(),
                key: key("shared_dir"),
            }),
            (None, Election::FileLock) if g.shared_dir.is_none() => self.refuse(
                &key("shared_dir"),
                "is required for election = \"file-lock\"",
                "set the directory every member of the group locks and shares, e.g. shared_dir = \"data/hub\"",
            ),
            (_, other) if g.shared_dir.is_some() && other != Election::FileLock => {
                self.only_for(&key("shared_dir"), Election::FileLock, other)
            }
            _ => {}
        }
        if g.replication_token.is_some() && election != Election::ZooKeeper {
            self.only_for(&key("replication_token"), Election::ZooKeeper, election);
        }
        if election == Election::ZooKeeper {
            self.replication_token(&key("replication_token"), g, count);
        }
        let group_broker = self.broker(&key("broker"), g.broker.as_ref(), broker);
        if count == 0 {
            return None;
        }
        Some(Group {
            name: name?,
            election,
            replicas,
            sync,
            quorum_timeout: quorum_timeout.unwrap_or(Duration::from_secs(5)),
            lock_poll: lock_poll.unwrap_or(Duration::from_secs(1)),
            shared_dir: shared_dir.filter(|_| election == Election::FileLock),
            replication_token: g.replication_token.clone().map(Secret::new),
            broker: group_broker,
            members,
        })
    }

    /// A replicated group with more than one member authenticates its followers: without a
    /// token, anyone who reaches a replication port could follow the master and acknowledge
    /// writes toward its quorum.
    fn replication_token(&mut self, key: &str, g: &RawGroup, count: usize) {
        let make = "make one with `meshmq token` and set replication_token = \"THAT TOKEN\" in this [[group]] (every member reads the same file)";
        match g.replication_token.as_deref() {
            None if count > 1 => self.refuse(
                key,
                format!("is missing, and the group's {count} members replicate its journal to each other: without it anyone who reaches a replication port could follow the master and acknowledge writes"),
                make,
            ),
            // The value is a credential: name its length, never echo it.
            Some(t) if t.chars().count() < MIN_REPLICATION_TOKEN => self.refuse(
                key,
                format!(
                    "is {} characters long, shorter than {MIN_REPLICATION_TOKEN}: it could be guessed",
                    t.chars().count()
                ),
                make,
            ),
            _ => {}
        }
    }

    fn member(
        &mut self,
        context: &MemberContext<'_>,
        raw: &RawMember,
        addresses: &mut Vec<(SocketAddr, Claim)>,
        directories: &mut Vec<Directory>,
    ) -> Option<Member> {
        let at = context.at;
        let key = |k: &str| format!("{at}.{k}");
        let claim = |key: String| Claim {
            key,
            member: context.index,
        };
        let name = self
            .required(
                &key("name"),
                raw.name.as_deref(),
                "name the member, e.g. name = \"hub-1\"",
            )
            .and_then(|n| self.name(&key("name"), n, MemberName::parse));
        let admin = self
            .required(
                &key("admin"),
                raw.admin.as_deref(),
                "set the admin HTTP address, e.g. admin = \"127.0.0.1:8161\"",
            )
            .and_then(|text| self.parsed(&key("admin"), parse_socket_addr(text, "127.0.0.1:8161")));
        if let Some(addr) = admin {
            addresses.push((addr, claim(key("admin"))));
        }
        // A duplicate name is refused already; its default data_dir would only repeat that.
        let data_dir_text = match (&raw.data_dir, &name) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some(name)) if context.name_unique => Some(format!("data/{name}")),
            _ => None,
        };
        let data_dir = self.path(&key("data_dir"), data_dir_text.as_deref());
        if let (Some(dir), Some(text)) = (&data_dir, data_dir_text) {
            directories.push(Directory {
                path: dir.clone(),
                text,
                key: key("data_dir"),
            });
        }
        let bind = raw
            .bind
            .as_deref()
            .and_then(|b| self.parsed(&key("bind"), parse_bind_ip(b)));
        let weight = self
            .whole(&key("weight"), raw.weight, 0, U32_MAX)
            .unwrap_or(1);
        let replication = raw.replication.as_deref().and_then(|text| {
            self.parsed(
                &key("replication"),
                parse_socket_addr(text, "127.0.0.1:61619"),
            )
        });
        match (&raw.replication, context.election) {
            (None, Election::ZooKeeper) => self.refuse(
                &key("replication"),
                "is required for election = \"zookeeper\"",
                "set the address followers replicate the journal from, e.g. replication = \"127.0.0.1:61619\"",
            ),
            (Some(_), other) if other != Election::ZooKeeper => self.only_for(&key("replication"), Election::ZooKeeper, other),
            _ => {}
        }
        if let Some(addr) = replication {
            addresses.push((addr, claim(key("replication"))));
        }
        if raw.listener.is_empty() {
            self.refuse(
                at,
                "has no listener",
                "add a [[group.member.listener]] with url = \"tcp://127.0.0.1:61616\"",
            );
        }
        let mut listeners = Vec::new();
        let mut listeners_ok = true;
        for (i, l) in raw.listener.iter().enumerate() {
            let listener_at = format!("{at}.listener[{i}]");
            let listener = self.listener(&listener_at, l, context.cluster_updates_on);
            if let Some(listener) = &listener {
                addresses.push((listener.url.addr, claim(format!("{listener_at}.url"))));
            }
            listeners_ok &= listener.is_some();
            listeners.extend(listener);
        }
        if !listeners_ok || listeners.is_empty() {
            return None;
        }
        Some(Member {
            name: name?,
            admin: admin?,
            data_dir: data_dir?,
            bind,
            weight,
            replication: replication.filter(|_| context.election == Election::ZooKeeper),
            listeners,
        })
    }

    fn listener(
        &mut self,
        at: &str,
        raw: &RawListener,
        cluster_updates_on: bool,
    ) -> Option<Listener> {
        let key = |k: &str| format!("{at}.{k}");
        let url = self
            .required(
                &key("url"),
                raw.url.as_deref(),
                "write the address to listen on, e.g. url = \"tcp://127.0.0.1:61616\"",
            )
            .and_then(|text| self.parsed(&key("url"), parse_listener_url(text)));
        let advertise = raw
            .advertise
            .as_deref()
            .and_then(|text| self.parsed(&key("advertise"), parse_client_url(text)));
        if let (Some(url), Some(adv)) = (&url, &advertise) {
            if adv.scheme != url.scheme {
                self.refuse(
                    &key("advertise"),
                    format!(
                        "has scheme \"{}\", but the listener's url is \"{}\"",
                        adv.scheme, url.scheme
                    ),
                    format!(
                        "advertise the same scheme, e.g. advertise = \"{}://{}\"",
                        url.scheme, adv.target
                    ),
                );
            }
        }
        if let (Some(url), None, true) = (&url, &advertise, cluster_updates_on) {
            if url.addr.ip().is_unspecified() {
                self.refuse(
                    &key("advertise"),
                    format!("is required: {url} listens on every address and cluster updates are on, so clients need an address to dial"),
                    format!("set advertise = \"{}://HOST:{}\" with the host name clients use", url.scheme, url.addr.port()),
                );
            }
        }
        let max_connections = self.whole(&key("max_connections"), raw.max_connections, 1, U32_MAX);
        let update = raw.update_cluster_clients.unwrap_or(false);
        let on_remove = raw.update_cluster_clients_on_remove.unwrap_or(false);
        if on_remove && !update {
            self.refuse(
                &key("update_cluster_clients_on_remove"),
                "is true, but update_cluster_clients is not",
                "set update_cluster_clients = true too, or remove this key",
            );
        }
        let mut filters = Vec::new();
        let mut filters_ok = true;
        for (i, pattern) in raw.update_cluster_filter.iter().enumerate() {
            let filter = self.parsed(
                &format!("{at}.update_cluster_filter[{i}]"),
                parse_group_filter(pattern),
            );
            filters_ok &= filter.is_some();
            filters.extend(filter);
        }
        let tls = url
            .as_ref()
            .and_then(|url| self.tls(at, raw, url.scheme))
            .flatten();
        let url = url?;
        if !filters_ok || (url.scheme.is_tls() && tls.is_none()) {
            return None;
        }
        Some(Listener {
            url,
            advertise,
            max_connections,
            update_cluster_clients: update,
            rebalance_cluster_clients: raw.rebalance_cluster_clients.unwrap_or(false),
            update_cluster_clients_on_remove: on_remove,
            update_cluster_filter: filters,
            tls,
        })
    }

    /// `Some(files)` for a TLS scheme with its files, `Some(None)` for a plain one; `None` after
    /// a refusal.
    fn tls(&mut self, at: &str, raw: &RawListener, scheme: Scheme) -> Option<Option<TlsFiles>> {
        let keys = [
            ("tls_cert", raw.tls_cert.as_deref()),
            ("tls_key", raw.tls_key.as_deref()),
            ("tls_client_ca", raw.tls_client_ca.as_deref()),
        ];
        if !scheme.is_tls() {
            let mut ok = true;
            for (k, value) in keys {
                if value.is_some() {
                    ok = false;
                    self.refuse(
                        &format!("{at}.{k}"),
                        format!("is only used by ssl, stomp+ssl, mqtt+ssl, quic and wss listeners, and this one is \"{scheme}\""),
                        "remove it, or change the url's scheme to ssl, stomp+ssl, mqtt+ssl, quic or wss",
                    );
                }
            }
            return ok.then_some(None);
        }
        let required = [
            (
                "tls_cert",
                raw.tls_cert.as_deref(),
                "set the PEM certificate chain file, e.g. tls_cert = \"certs/hub-1.pem\"",
            ),
            (
                "tls_key",
                raw.tls_key.as_deref(),
                "set the PEM private key file, e.g. tls_key = \"certs/hub-1.key\"",
            ),
        ];
        for (k, value, fix) in required {
            if value.is_none() {
                self.refuse(
                    &format!("{at}.{k}"),
                    format!("is required because the url's scheme is \"{scheme}\""),
                    fix,
                );
            }
        }
        let cert = self.path(&format!("{at}.tls_cert"), raw.tls_cert.as_deref());
        let key = self.path(&format!("{at}.tls_key"), raw.tls_key.as_deref());
        let client_ca = self.path(&format!("{at}.tls_client_ca"), raw.tls_client_ca.as_deref());
        if raw.tls_client_ca.is_some() && client_ca.is_none() {
            return None;
        }
        Some(Some(TlsFiles {
            cert: cert?,
            key: key?,
            client_ca,
        }))
    }

    fn address_clashes(&mut self, addresses: &[(SocketAddr, Claim)]) {
        for (i, (addr, claim)) in addresses.iter().enumerate() {
            let clash = addresses[..i].iter().find(|(other, other_claim)| {
                other == addr || (other_claim.member == claim.member && overlaps(*addr, *other))
            });
            if let Some((other, other_claim)) = clash {
                let problem = if other == addr {
                    format!("{addr} is also used by {}", other_claim.key)
                } else {
                    format!("{addr} overlaps {other} of {} (same port, and one listens on every address)", other_claim.key)
                };
                self.refuse(&claim.key, problem, ADDRESS_FIX);
            }
        }
    }

    fn directory_clashes(&mut self, directories: &[Directory]) {
        // A file-lock group's members share its shared_dir on purpose: it is listed once.
        for (i, dir) in directories.iter().enumerate() {
            if let Some(other) = directories[..i].iter().find(|d| d.path == dir.path) {
                self.refuse(
                    &dir.key,
                    format!("{:?} is also the directory of {}", dir.text, other.key),
                    "give each member its own data_dir and each file-lock group its own shared_dir; two brokers must never share a journal by accident",
                );
            }
        }
    }
}

/// What `groups` reads before the group's own keys: its name, election and members.
struct GroupParts {
    name: Option<GroupName>,
    election: Election,
    members: Vec<Member>,
}

/// What a member's checks need to know about where it sits.
struct MemberContext<'a> {
    at: &'a str,
    /// Position among all members of the mesh, in file order.
    index: usize,
    election: Election,
    /// Whether no other member of the mesh has this member's name.
    name_unique: bool,
    /// Whether any listener of the mesh sends cluster updates.
    cluster_updates_on: bool,
}

/// (group index, member index in its group) of the `n`th member of the mesh.
fn locate(groups: &[RawGroup], mut n: usize) -> (usize, usize) {
    for (gi, g) in groups.iter().enumerate() {
        if n < g.member.len() {
            return (gi, n);
        }
        n -= g.member.len();
    }
    (0, n)
}

/// Two addresses of one member that cannot both be bound: same port, and one of them is the
/// unspecified address of the other's family (or `[::]`, which Linux binds dual-stack).
pub(super) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let covers = |wide: SocketAddr, other: SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || wide.is_ipv4() == other.is_ipv4())
    };
    covers(a, b) || covers(b, a)
}
