//! The client library in a few lines: run `rcache local` in one terminal,
//! then `cargo run --example client` (or pass orchestrator addresses:
//! `cargo run --example client -- 10.0.0.1:7000 10.0.0.2:7000`).

use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), rcache::client::Error> {
    let mut addrs: Vec<String> = std::env::args().skip(1).collect();
    if addrs.is_empty() {
        addrs.push("127.0.0.1:7000".into());
    }
    // Several orchestrators: requests go to the first that answers.
    let mut builder = rcache::Client::builder(addrs).timeout(Duration::from_secs(2));
    if let Ok(token) = std::env::var("RCACHE_AUTH_TOKEN") {
        builder = builder.auth_token(token);
    }
    let client = builder.build();

    client.set("greeting", "hello").await?;
    let value = client.get("greeting").await?;
    println!(
        "greeting = {:?}",
        value.as_deref().map(String::from_utf8_lossy)
    );

    client
        .set_with_ttl("session:42", "token", Duration::from_secs(60))
        .await?;
    println!("deleted greeting: {}", client.delete("greeting").await?);
    println!("greeting now = {:?}", client.get("greeting").await?);

    // Clones share the pool: many tasks, few connections.
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    client.set(format!("task{t}:{i}"), "x").await?;
                }
                Ok::<_, rcache::client::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task")?;
    }
    println!("800 writes from 8 tasks done");
    Ok(())
}
