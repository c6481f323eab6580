//! A member's ZooKeeper session and the group's znodes.
//!
//! Layout under `ROOT/MESH/GROUP`: `members/<name>-<seq>` — one ephemeral sequential znode per
//! live member, its data an `Announce` (JSON); `epoch` — a persistent znode holding the current
//! epoch as decimal text, only ever changed by a claim (a conditional multi-write).
//!
//! Owns: the `zookeeper_client::Client` and its watchers. Must not touch: the role machine's
//! decisions (it only reads and writes what the driver asks) or the journal.
//!
//! Access: with a `digest`, the session logs in with it and the group's znodes (the group's
//! own, `members`, `epoch` and every member znode) are created with ZooKeeper's `creator_all`
//! ACL: only a session holding the same digest can read or change them. The shared ancestors
//! (`ROOT`, `ROOT/MESH`) let anyone read and create children, so meshes and groups with other
//! digests can live under one root. Without a digest every znode is open to anyone.

use std::time::{Duration, Instant};

use zookeeper_client as zk;

use super::machine::{Announce, Seen, View};
use crate::config::ZooKeeperOptions;

#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error("ZooKeeper {op} {path}: {source}")]
    Op {
        op: &'static str,
        path: String,
        source: zk::Error,
    },
    #[error("ZooKeeper at {connect}: cannot open a session: {source}")]
    Connect { connect: String, source: zk::Error },
    #[error("ZooKeeper {path}: unreadable data: {detail}")]
    Data { path: String, detail: String },
}

impl ZkError {
    /// True when the session is gone and a new one is needed.
    pub fn is_expired(&self) -> bool {
        matches!(
            self,
            ZkError::Op {
                source: zk::Error::SessionExpired | zk::Error::AuthFailed,
                ..
            }
        )
    }
}

fn op<'a>(op: &'static str, path: &'a str) -> impl FnOnce(zk::Error) -> ZkError + 'a {
    move |source| ZkError::Op {
        op,
        path: path.to_string(),
        source,
    }
}

/// One session, registered as one member of one group.
pub struct GroupSession {
    client: zk::Client,
    members: String,
    epoch_path: String,
    /// Our member znode.
    me: String,
    name: String,
}

/// What the group path of a mesh's group is.
pub fn group_path(opts: &ZooKeeperOptions, mesh: &str, group: &str) -> String {
    format!("{}/{}/{}", opts.root, mesh, group)
}

impl GroupSession {
    /// Opens a session, creates the group's znodes if missing, and registers `announce`.
    pub async fn open(
        opts: &ZooKeeperOptions,
        mesh: &str,
        group: &str,
        announce: &Announce,
    ) -> Result<GroupSession, ZkError> {
        let connect = opts
            .connect
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(",");
        // Tolerate a stalled link for most of a session before reconnecting elsewhere.
        let mut connector = zk::Client::connector()
            .with_session_timeout(opts.session_timeout)
            .with_connection_timeout(opts.session_timeout * 3 / 5);
        // With a digest, `ROOT` and `ROOT/MESH`: anyone may list them and add a mesh or group
        // of its own; nobody may change or delete them.
        let shared_ancestors = [zk::Acl::new(
            zk::Permission::READ | zk::Permission::CREATE,
            zk::AuthId::anyone(),
        )];
        let (acls, ancestors) = match &opts.digest {
            Some(secret) => {
                connector = connector.with_auth("digest", secret.expose().as_bytes());
                (zk::Acls::creator_all(), zk::Acls::new(&shared_ancestors))
            }
            None => (zk::Acls::anyone_all(), zk::Acls::anyone_all()),
        };
        let client = connector
            .connect(&connect)
            .await
            .map_err(|source| ZkError::Connect {
                connect: connect.clone(),
                source,
            })?;
        let base = group_path(opts, mesh, group);
        let members = format!("{base}/members");
        let epoch_path = format!("{base}/epoch");
        let mesh_path = format!("{}/{}", opts.root, mesh);
        client
            .mkdir(&mesh_path, &zk::CreateMode::Persistent.with_acls(ancestors))
            .await
            .or_else(|e| match e {
                zk::Error::NodeExists => Ok(()),
                e => Err(e),
            })
            .map_err(op("mkdir", &mesh_path))?;
        let persistent = zk::CreateMode::Persistent.with_acls(acls);
        for (path, data) in [(&base, &b""[..]), (&members, b""), (&epoch_path, b"0")] {
            match client.create(path, data, &persistent).await {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(op("create", path)(e)),
            }
        }
        let prefix = format!("{members}/{}-", announce.name);
        let data = encode(announce);
        let (_, seq) = client
            .create(
                &prefix,
                &data,
                &zk::CreateMode::EphemeralSequential.with_acls(acls),
            )
            .await
            .map_err(op("create", &prefix))?;
        Ok(GroupSession {
            client,
            me: format!("{prefix}{seq}"),
            members,
            epoch_path,
            name: announce.name.clone(),
        })
    }

    pub fn state_watcher(&self) -> zk::StateWatcher {
        self.client.state_watcher()
    }

    pub fn state(&self) -> zk::SessionState {
        self.client.state()
    }

    /// A watcher firing on any change under the group.
    pub async fn watch(&self) -> Result<zk::PersistentWatcher, ZkError> {
        let base = self.members.trim_end_matches("/members").to_string();
        self.client
            .watch(&base, zk::AddWatchMode::PersistentRecursive)
            .await
            .map_err(op("watch", &base))
    }

    /// Reads the whole group. Our own older znodes (from a session of a previous process that
    /// ZooKeeper has not expired yet) are left out: they are not a live member.
    pub async fn view(&self) -> Result<View, ZkError> {
        let (data, stat) = self
            .client
            .get_data(&self.epoch_path)
            .await
            .map_err(op("read", &self.epoch_path))?;
        let epoch = std::str::from_utf8(&data)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| ZkError::Data {
                path: self.epoch_path.clone(),
                detail: "not a decimal epoch".into(),
            })?;
        let children = self
            .client
            .list_children(&self.members)
            .await
            .map_err(op("list", &self.members))?;
        let mut members = Vec::with_capacity(children.len());
        for child in children {
            let path = format!("{}/{child}", self.members);
            let (data, stat) = match self.client.get_data(&path).await {
                Ok(x) => x,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(op("read", &path)(e)),
            };
            let Ok(info) = serde_json::from_slice::<Announce>(&data) else {
                tracing::warn!(znode = %path, "ignoring a member znode with unreadable data");
                continue;
            };
            if info.name == self.name && path != self.me {
                continue;
            }
            members.push(Seen {
                path,
                version: stat.version,
                info,
            });
        }
        Ok(View {
            members,
            epoch,
            epoch_version: stat.version,
        })
    }

    /// Writes our announcement.
    pub async fn publish(&self, announce: &Announce) -> Result<(), ZkError> {
        self.client
            .set_data(&self.me, &encode(announce), None)
            .await
            .map(|_| ())
            .map_err(op("write", &self.me))
    }

    /// The claim transaction; `Ok(false)` when a check failed (someone moved first).
    pub async fn claim(
        &self,
        epoch: u64,
        checks: &[(String, i32)],
        epoch_version: i32,
        announce: &Announce,
    ) -> Result<bool, ZkError> {
        let mut w = self.client.new_multi_writer();
        let add = |r: Result<(), zk::Error>| r.map_err(op("claim", &self.epoch_path));
        for (path, version) in checks {
            add(w.add_check_version(path, *version))?;
        }
        add(w.add_set_data(
            &self.epoch_path,
            epoch.to_string().as_bytes(),
            Some(epoch_version),
        ))?;
        add(w.add_set_data(&self.me, &encode(announce), None))?;
        match w.commit().await {
            Ok(_) => Ok(true),
            Err(zk::MultiWriteError::OperationFailed {
                source: zk::Error::BadVersion | zk::Error::NoNode,
                ..
            }) => Ok(false),
            Err(e) => Err(op("claim", &self.epoch_path)(e.into())),
        }
    }

    /// A round trip to the servers; returns when it was sent (the session was alive then).
    pub async fn touch(&self) -> Result<Instant, ZkError> {
        let sent = Instant::now();
        self.client
            .check_stat(&self.epoch_path)
            .await
            .map_err(op("read", &self.epoch_path))?;
        Ok(sent)
    }

    pub fn session_timeout(&self) -> Duration {
        self.client.session_timeout()
    }
}

fn encode(a: &Announce) -> Vec<u8> {
    serde_json::to_vec(a).expect("an announcement serializes")
}
