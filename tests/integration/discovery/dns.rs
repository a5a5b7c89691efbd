//! An authoritative DNS server on loopback for the discovery tests: one UDP socket,
//! messages encoded and decoded by hickory-proto (the codec the resolver uses), and a
//! zone the test changes as it goes: A, AAAA and SRV records, a TTL, and failure modes
//! (SERVFAIL, REFUSED, silence). Names not in the zone are NXDOMAIN.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// From the zone.
    Answer,
    /// SERVFAIL to everything.
    ServFail,
    /// REFUSED to everything.
    Refused,
}

/// One SRV record.
#[derive(Debug, Clone)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// The records served.
#[derive(Debug)]
pub struct Zone {
    pub addrs: HashMap<String, Vec<IpAddr>>,
    pub srv: HashMap<String, Vec<Srv>>,
    pub ttl: u32,
    pub mode: Mode,
    /// Questions answered so far.
    pub queries: usize,
}

/// The server; stops when dropped.
pub struct TestDns {
    pub addr: SocketAddr,
    pub zone: Arc<Mutex<Zone>>,
    task: JoinHandle<()>,
}

impl TestDns {
    pub async fn start(ttl: u32) -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            addrs: HashMap::new(),
            srv: HashMap::new(),
            ttl,
            mode: Mode::Answer,
            queries: 0,
        }));
        let z = Arc::clone(&zone);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let reply = answer(&z, &query);
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        TestDns { addr, zone, task }
    }

    /// Serves `ips` as the A/AAAA records of `name`.
    pub fn set_addrs(&self, name: &str, ips: &[IpAddr]) {
        let mut z = self.zone.lock().unwrap();
        z.addrs.insert(fqdn(name), ips.to_vec());
    }

    /// Serves `records` as the SRV records of `name`.
    pub fn set_srv(&self, name: &str, records: Vec<Srv>) {
        self.zone.lock().unwrap().srv.insert(fqdn(name), records);
    }

    /// Forgets `name` (NXDOMAIN from now on).
    pub fn remove(&self, name: &str) {
        let mut z = self.zone.lock().unwrap();
        z.addrs.remove(&fqdn(name));
        z.srv.remove(&fqdn(name));
    }

    pub fn set_mode(&self, mode: Mode) {
        self.zone.lock().unwrap().mode = mode;
    }

    pub fn queries(&self) -> usize {
        self.zone.lock().unwrap().queries
    }

    /// Stops answering: the socket closes, so questions meet an unreachable port.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fqdn(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.ends_with('.') { n } else { format!("{n}.") }
}

fn answer(zone: &Mutex<Zone>, query: &Message) -> Message {
    let mut z = zone.lock().unwrap();
    z.queries += 1;
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired());
    let Some(q) = query.queries().first() else {
        reply.set_response_code(ResponseCode::FormErr);
        return reply;
    };
    reply.add_query(q.clone());
    match z.mode {
        Mode::ServFail => {
            reply.set_response_code(ResponseCode::ServFail);
            return reply;
        }
        Mode::Refused => {
            reply.set_response_code(ResponseCode::Refused);
            return reply;
        }
        Mode::Answer => {}
    }
    let name = q.name().clone();
    let key = fqdn(&name.to_ascii());
    let ttl = z.ttl;
    let known = z.addrs.contains_key(&key) || z.srv.contains_key(&key);
    let mut records = Vec::new();
    match q.query_type() {
        RecordType::A | RecordType::AAAA => {
            for ip in z.addrs.get(&key).into_iter().flatten() {
                let rdata = match (ip, q.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                records.push(Record::from_rdata(name.clone(), ttl, rdata));
            }
        }
        RecordType::SRV => {
            for s in z.srv.get(&key).into_iter().flatten() {
                let target = Name::from_ascii(fqdn(&s.target)).unwrap();
                let rdata = RData::SRV(SRV::new(s.priority, s.weight, s.port, target));
                records.push(Record::from_rdata(name.clone(), ttl, rdata));
            }
        }
        _ => {}
    }
    if records.is_empty() {
        if !known {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        let origin = Name::from_ascii("test.").unwrap();
        let soa = SOA::new(
            Name::from_ascii("ns.test.").unwrap(),
            Name::from_ascii("admin.test.").unwrap(),
            1,
            60,
            60,
            600,
            0,
        );
        reply.add_name_server(Record::from_rdata(origin, 0, RData::SOA(soa)));
    }
    for r in records {
        reply.add_answer(r);
    }
    reply
}
