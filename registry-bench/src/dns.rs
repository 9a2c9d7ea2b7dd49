//! Measurement 8: DNS. SRV lookups of a 3- and a 100-instance service at 64
//! concurrent clients against a `registry-server --dev`'s DNS interface, and
//! against NSD (Debian's `nsd`, a static authoritative server written for
//! speed) serving the same records from a zone file this module writes: NSD
//! is the ceiling for answering DNS on this machine. The goal is at least
//! half of it.
//!
//! The load: 64 tasks, each with its own UDP socket, send one query (EDNS0,
//! 4096 bytes offered), wait for its answer (1 s at most, else an error) and
//! send the next, for the load time; latency is per query. Both servers get
//! exactly the same queries from the same loop. The 100-instance SRV answer
//! (100 SRV and 100 A records) does not fit 4096 bytes, so both truncate it
//! (TC): what is measured is answering a large name, as a client sees it
//! before its TCP retry.

use crate::load::{percentile, RunStats};
use crate::procs::{free_ports, Proc, ProcSpec};
use anyhow::{bail, Context, Result};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent clients.
pub const CLIENTS: usize = 64;
/// Instance counts of the two services.
pub const SIZES: [usize; 2] = [3, 100];

/// One row: a service size, ours and NSD's runs.
pub struct DnsRow {
    /// Instances of the service looked up.
    pub instances: usize,
    /// Our server's runs.
    pub ours: Vec<RunStats>,
    /// NSD's runs.
    pub nsd: Vec<RunStats>,
}

/// Measurement 8's rows, and NSD's version line.
#[derive(Default)]
pub struct DnsResults {
    /// One row per service size.
    pub rows: Vec<DnsRow>,
    /// `nsd -v`'s first line.
    pub nsd_version: String,
}

/// Installs NSD with apt-get when it is missing (as the bench installs etcd).
pub fn ensure_nsd() -> Result<()> {
    if nsd_version().is_some() {
        return Ok(());
    }
    eprintln!("nsd not found: installing it with apt-get");
    let root = unsafe { libc::geteuid() } == 0;
    for args in [
        &["apt-get", "update", "-qq"][..],
        &["apt-get", "install", "-y", "-qq", "nsd"],
    ] {
        let mut cmd = if root {
            std::process::Command::new(args[0])
        } else {
            let mut c = std::process::Command::new("sudo");
            c.arg(args[0]);
            c
        };
        let ok = cmd
            .args(&args[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("run {}", args.join(" ")))?
            .success();
        if !ok {
            bail!("{} failed", args.join(" "));
        }
    }
    nsd_version()
        .map(|_| ())
        .context("nsd still missing after apt-get")
}

fn nsd_version() -> Option<String> {
    let out = std::process::Command::new("nsd").arg("-v").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(str::to_string)
        .filter(|l| l.contains("NSD"))
}

/// The instances of service `svc`: node `{svc}-node-{i}` at 10.{size}.{i/250}.{i%250+1}.
fn instances(svc: &str, size: usize) -> Vec<(String, String)> {
    (0..size)
        .map(|i| {
            (
                format!("{svc}-node-{i}"),
                format!("10.{}.{}.{}", size % 250, i / 250, i % 250 + 1),
            )
        })
        .collect()
}

fn service(size: usize) -> String {
    format!("dns{size}")
}

/// Runs measurement 8: `runs` runs of `load` per cell.
pub async fn run(bin: &Path, root: &Path, load: Duration, runs: usize) -> Result<DnsResults> {
    ensure_nsd()?;
    let ports = free_ports(3)?;
    let (http, rpc, dns_port) = (ports[0], ports[1], ports[2]);
    let dir = root.join("dns-s1");
    std::fs::create_dir_all(&dir)?;
    let mut ours = Proc::start(ProcSpec {
        name: "dns-s1".into(),
        program: bin.join("registry-server"),
        args: vec![
            "--dev".into(),
            "--node".into(),
            "dns-s1".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--http-addr".into(),
            format!("127.0.0.1:{http}"),
            "--rpc-addr".into(),
            format!("127.0.0.1:{rpc}"),
            "--dns-addr".into(),
            format!("127.0.0.1:{dns_port}"),
        ],
        log: root.join("dns-s1.log"),
    })?;
    let client = registry_api::RegistryClient::new(format!("http://127.0.0.1:{http}"));
    let started = Instant::now();
    while !client.status_leader().await.is_ok_and(|l| !l.is_empty()) {
        ours.check_alive()?;
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the DNS bench server did not lead within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for size in SIZES {
        let svc = service(size);
        for (i, (node, addr)) in instances(&svc, size).into_iter().enumerate() {
            let req = registry_api::RegisterRequest {
                node,
                address: addr,
                service: Some(registry_api::AgentService {
                    id: format!("{svc}-{i}"),
                    service: svc.clone(),
                    port: 8080,
                    ..Default::default()
                }),
                ..Default::default()
            };
            client.catalog_register(&req, None).await?;
        }
    }
    let (nsd_dir, nsd_port) = (root.join("nsd"), free_ports(1)?[0]);
    write_nsd(&nsd_dir, nsd_port)?;
    let mut nsd = Proc::start(ProcSpec {
        name: "nsd".into(),
        program: "nsd".into(),
        args: vec![
            "-d".into(),
            "-c".into(),
            nsd_dir.join("nsd.conf").display().to_string(),
        ],
        log: root.join("nsd.log"),
    })?;
    let ours_addr: SocketAddr = ([127, 0, 0, 1], dns_port).into();
    let nsd_addr: SocketAddr = ([127, 0, 0, 1], nsd_port).into();
    for (addr, what) in [(ours_addr, "ours"), (nsd_addr, "nsd")] {
        let started = Instant::now();
        loop {
            let q = query(&service(3));
            if ask(addr, &q).await.is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("{what} does not answer DNS on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut results = DnsResults {
        nsd_version: nsd_version().unwrap_or_default(),
        ..Default::default()
    };
    for size in SIZES {
        let q = Arc::new(query(&service(size)));
        let mut row = DnsRow {
            instances: size,
            ours: Vec::new(),
            nsd: Vec::new(),
        };
        for run in 0..runs {
            let o = load_run(ours_addr, q.clone(), load).await?;
            ours.check_alive()?;
            let n = load_run(nsd_addr, q.clone(), load).await?;
            nsd.check_alive()?;
            eprintln!(
                "  run {} SRV {size} instances: ours {:.0}/s p50 {:?} p99 {:?} ({} err) | nsd {:.0}/s p50 {:?} p99 {:?} ({} err)",
                run + 1,
                o.ops_per_s,
                o.p50,
                o.p99,
                o.errors,
                n.ops_per_s,
                n.p50,
                n.p99,
                n.errors
            );
            row.ours.push(o);
            row.nsd.push(n);
        }
        results.rows.push(row);
    }
    Ok(results)
}

/// An SRV query for `svc.service.consul.` offering 4096 bytes.
fn query(svc: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 1;
    m.metadata.message_type = MessageType::Query;
    m.metadata.op_code = OpCode::Query;
    m.add_query(Query::query(
        Name::from_str(&format!("{svc}.service.consul.")).unwrap_or_default(),
        RecordType::SRV,
    ));
    let mut e = Edns::new();
    e.set_max_payload(4096);
    m.edns = Some(e);
    m.to_vec().unwrap_or_default()
}

/// One query from a fresh socket (readiness probe).
async fn ask(addr: SocketAddr, q: &[u8]) -> Result<()> {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    s.connect(addr).await?;
    s.send(q).await?;
    let mut buf = vec![0u8; 65535];
    tokio::time::timeout(Duration::from_millis(500), s.recv(&mut buf)).await??;
    Ok(())
}

/// [`CLIENTS`] tasks asking `q` of `addr` one query at a time for `load`.
async fn load_run(addr: SocketAddr, q: Arc<Vec<u8>>, load: Duration) -> Result<RunStats> {
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + load;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            s.connect(addr).await?;
            let mut buf = vec![0u8; 65535];
            let mut query = q.to_vec();
            let (mut lat, mut errors, mut first) = (Vec::new(), 0u64, None);
            tokio::time::sleep_until(start.into()).await;
            let mut id = (c as u16).wrapping_mul(1024);
            while Instant::now() < end {
                id = id.wrapping_add(1);
                query[..2].copy_from_slice(&id.to_be_bytes());
                let t = Instant::now();
                s.send(&query).await?;
                // Skip late answers to earlier, timed-out queries.
                let got = tokio::time::timeout(Duration::from_secs(1), async {
                    loop {
                        let n = s.recv(&mut buf).await?;
                        if n >= 12 && buf[..2] == id.to_be_bytes() {
                            return Ok::<_, std::io::Error>(n);
                        }
                    }
                })
                .await;
                match got {
                    Ok(Ok(_)) if buf[3] & 0x0f == 0 => lat.push(t.elapsed()),
                    Ok(Ok(_)) => {
                        errors += 1;
                        first.get_or_insert_with(|| format!("rcode {}", buf[3] & 0x0f));
                    }
                    Ok(Err(e)) => {
                        errors += 1;
                        first.get_or_insert_with(|| e.to_string());
                    }
                    Err(_) => {
                        errors += 1;
                        first.get_or_insert_with(|| "no answer within 1 s".to_string());
                    }
                }
            }
            Ok::<_, anyhow::Error>((lat, errors, first))
        }));
    }
    let (mut all, mut errors, mut first_error) = (Vec::new(), 0, None);
    for t in tasks {
        let (lat, e, f) = t.await??;
        all.extend(lat);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    all.sort();
    Ok(RunStats {
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        ops_per_s: all.len() as f64 / load.as_secs_f64(),
        ok: all.len() as u64,
        errors,
        first_error,
        cpu_per_op: None,
        client_cpu_per_op: None,
    })
}

/// NSD's configuration and the `consul.` zone with the same records as the
/// registry answers: per instance an SRV (priority 1, weight 1, port 8080)
/// to `<node>.node.dc1.consul.` and that name's A record.
fn write_nsd(dir: &Path, port: u16) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut zone = String::from(
        "$ORIGIN consul.\n$TTL 0\n@ IN SOA ns.consul. hostmaster.consul. 1 3600 600 86400 0\n@ IN NS ns.consul.\nns IN A 127.0.0.1\n",
    );
    for size in SIZES {
        let svc = service(size);
        for (node, addr) in instances(&svc, size) {
            zone.push_str(&format!(
                "{svc}.service IN SRV 1 1 8080 {node}.node.dc1.consul.\n"
            ));
            zone.push_str(&format!("{node}.node.dc1 IN A {addr}\n"));
        }
    }
    std::fs::write(dir.join("consul.zone"), zone)?;
    let d = dir.display();
    // Two server processes: the machine's two cores, as our server's runtime uses them.
    // Response rate limiting off: every query comes from 127.0.0.1, which NSD's default RRL
    // (200 answers per second per /24) would mostly drop.
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1@{port}\n  server-count: 2\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  verbosity: 0\n  hide-version: yes\n  round-robin: yes\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\nremote-control:\n  control-enable: no\nzone:\n  name: consul\n  zonefile: \"{d}/consul.zone\"\n"
    );
    std::fs::write(dir.join("nsd.conf"), conf)?;
    Ok(())
}

/// The report's table: qps, p50 and p99 side by side, and ours as a share of NSD's qps.
pub fn table(r: &DnsResults) -> String {
    use std::fmt::Write;
    let med = |v: &[RunStats], f: &dyn Fn(&RunStats) -> f64| -> f64 {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(|a, b| a.total_cmp(b));
        x.get(x.len() / 2).copied().unwrap_or_default()
    };
    let ms = |d: f64| format!("{:.2} ms", d * 1e3);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n#### 8. DNS: SRV lookups at {CLIENTS} concurrent clients (UDP, EDNS0 4096) vs {}\n",
        if r.nsd_version.is_empty() {
            "NSD"
        } else {
            &r.nsd_version
        }
    );
    let _ = writeln!(
        s,
        "| service | ours qps | p50 | p99 | NSD qps | p50 | p99 | ours / NSD | goal |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for row in &r.rows {
        let oq = med(&row.ours, &|x| x.ops_per_s);
        let nq = med(&row.nsd, &|x| x.ops_per_s);
        let ratio = if nq > 0.0 { oq / nq } else { 0.0 };
        let _ = writeln!(
            s,
            "| {} instances | {:.0} | {} | {} | {:.0} | {} | {} | {:.0}% | {} |",
            row.instances,
            oq,
            ms(med(&row.ours, &|x| x.p50.as_secs_f64())),
            ms(med(&row.ours, &|x| x.p99.as_secs_f64())),
            nq,
            ms(med(&row.nsd, &|x| x.p50.as_secs_f64())),
            ms(med(&row.nsd, &|x| x.p99.as_secs_f64())),
            ratio * 100.0,
            if ratio >= 0.5 {
                "met (>= 50%)"
            } else {
                "missed (< 50%)"
            }
        );
    }
    let errors: u64 = r
        .rows
        .iter()
        .flat_map(|x| x.ours.iter().chain(&x.nsd))
        .map(|x| x.errors)
        .sum();
    let _ = writeln!(s, "\nErrors over all runs: {errors}. NSD serves the same SRV and A records from a zone file with 2 server processes; the load loop runs on the same 2 cores as both servers.");
    s
}
