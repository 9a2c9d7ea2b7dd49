//! The seeded fault schedule: one event every 3-8 s on dc1, through `docker`.
//! At most one server is impaired (killed, cut off dc1-lan, or paused) at a
//! time, so two of three always form a majority and the cluster must keep
//! taking writes; dc1's gateway is killed and restarted now and then on its
//! own (only `?dc=dc1` reads from dc2 depend on it).
//!
//! The schedule draws the same random numbers at every step whatever
//! happens, so a seed replays the same decisions; only "the current leader"
//! depends on the run.

use crate::lab::{outcome, Lab};
use crate::record::Recorder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// No new fault this close to the end of the run.
const LAST_FAULT_BEFORE_END: Duration = Duration::from_secs(2);

/// How a server is impaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impairment {
    /// `docker kill` (SIGKILL): no clean shutdown, data dir as the crash left it.
    Killed,
    /// `docker network disconnect` from dc1-lan: a partition.
    Disconnected,
    /// `docker pause` (cgroup freezer): alive, holding connections, silent.
    Paused,
}

/// The schedule's state.
pub struct FaultSchedule {
    /// Decisions, from the seed.
    rng: StdRng,
    /// The impaired server, if any.
    impaired: Option<(usize, Impairment)>,
    /// Whether dc1's gateway is killed.
    gateway_down: bool,
    /// Faults injected, "at 12.3s: kill dc1-server2 (leader)".
    pub injected: Vec<String>,
}

impl FaultSchedule {
    /// A schedule for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            // A different stream from every client's.
            rng: StdRng::seed_from_u64(seed.rotate_left(17) ^ 0xfa17),
            impaired: None,
            gateway_down: false,
            injected: Vec::new(),
        }
    }

    /// Runs until `until`; leaves healing to `Lab::heal_all`.
    pub async fn run(&mut self, lab: &Lab, rec: &Recorder, until: Instant) {
        loop {
            let pause = Duration::from_millis(self.rng.random_range(3000..8000));
            let now = Instant::now();
            // A fault in the last moments would be healed before anyone saw it.
            if now + pause + LAST_FAULT_BEFORE_END >= until {
                tokio::time::sleep(until.saturating_duration_since(now)).await;
                return;
            }
            tokio::time::sleep(pause).await;
            // Every step draws all of these, used or not (see the module doc).
            let r = self.rng.random_range(0..10);
            let again = self.rng.random_bool(0.5);
            let kind = match self.rng.random_range(0..3) {
                0 => Impairment::Killed,
                1 => Impairment::Disconnected,
                _ => Impairment::Paused,
            };
            let leader_wanted = self.rng.random_bool(0.5);
            let pick = self.rng.random_range(0..lab.servers.len());

            // The gateway goes down one step in ten and comes back one in two.
            if r == 0 || (self.gateway_down && r < 5) {
                self.toggle_gateway(lab, rec).await;
                continue;
            }
            if let Some((i, how)) = self.impaired {
                if !heal(lab, rec, i, how).await {
                    // Still impaired: never a second one; try again next step.
                    continue;
                }
                self.impaired = None;
                if !again {
                    continue;
                }
            }
            let leader = lab.leader().await;
            let target = match leader {
                Some(l) if leader_wanted => l,
                _ => pick,
            };
            let label = if leader == Some(target) {
                " (leader)"
            } else {
                ""
            };
            self.impair(lab, rec, target, kind, label).await;
        }
    }

    async fn impair(&mut self, lab: &Lab, rec: &Recorder, i: usize, how: Impairment, label: &str) {
        let s = &lab.servers[i];
        let args: Vec<&str> = match how {
            Impairment::Killed => vec!["kill", &s.name],
            Impairment::Disconnected => vec!["network", "disconnect", &lab.dc1_lan, &s.name],
            Impairment::Paused => vec!["pause", &s.name],
        };
        let r = lab.docker(&args).await;
        let what = match how {
            Impairment::Killed => "kill",
            Impairment::Disconnected => "disconnect",
            Impairment::Paused => "pause",
        };
        rec.event(format!(
            "fault: {what} {}{label}: docker {} -> {}",
            s.name,
            args.join(" "),
            outcome(&r)
        ));
        if r.is_ok() {
            self.impaired = Some((i, how));
            self.injected
                .push(format!("{:.1}s {what} {}{label}", secs(rec), s.name));
        } else if !heal(lab, rec, i, how).await {
            // Whatever state the failed command left it in, it counts as
            // impaired until a heal succeeds.
            self.impaired = Some((i, how));
        }
    }

    async fn toggle_gateway(&mut self, lab: &Lab, rec: &Recorder) {
        let verb = if self.gateway_down { "start" } else { "kill" };
        let r = lab.docker(&[verb, &lab.dc1_gateway]).await;
        rec.event(format!(
            "{}: docker {verb} {} -> {}",
            if self.gateway_down { "heal" } else { "fault" },
            lab.dc1_gateway,
            outcome(&r)
        ));
        if !self.gateway_down && r.is_ok() {
            self.injected
                .push(format!("{:.1}s kill {}", secs(rec), lab.dc1_gateway));
        }
        // After a failed start, assume it is still down and try again next time.
        self.gateway_down = (verb == "kill") == r.is_ok();
    }
}

/// Undoes one impairment; whether that worked.
async fn heal(lab: &Lab, rec: &Recorder, i: usize, how: Impairment) -> bool {
    let s = &lab.servers[i];
    let args: Vec<&str> = match how {
        Impairment::Killed => vec!["start", &s.name],
        Impairment::Disconnected => {
            vec![
                "network",
                "connect",
                "--ip",
                &s.lan_ip,
                &lab.dc1_lan,
                &s.name,
            ]
        }
        Impairment::Paused => vec!["unpause", &s.name],
    };
    let r = lab.docker(&args).await;
    rec.event(format!(
        "heal: docker {} -> {}",
        args.join(" "),
        outcome(&r)
    ));
    r.is_ok()
}

/// Seconds since the start, for the fault list.
fn secs(rec: &Recorder) -> f64 {
    rec.now() as f64 / 1e9
}
