//! The two ways to build the runtime image stay in step (issue #18): the image
//! `scripts/build-images` builds without a registry (target/images/phone.tar) holds
//! what deploy/Dockerfile's final stage puts in its image, with the same user, folder
//! and command. Checked against the Dockerfile itself, so a change to either side that
//! the other does not follow fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The final stage's instructions (continuations joined, comments dropped).
fn final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    let mut all = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(head) = line.trim_end().strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let instruction = std::mem::take(&mut current);
        let instruction = instruction.trim();
        if !instruction.is_empty() {
            let (keyword, rest) = instruction.split_once(' ').unwrap_or((instruction, ""));
            all.push((keyword.to_uppercase(), rest.trim().to_owned()));
        }
    }
    let from = all.iter().rposition(|(k, _)| k == "FROM").unwrap();
    all.split_off(from)
}

/// `sh -c script`'s output; panics when it fails.
fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Image {
    archive: PathBuf,
    layers: Vec<String>,
    config: serde_json::Value,
}

impl Image {
    fn open() -> Self {
        let archive = phone_test_support::cluster::images_dir().join("phone.tar");
        assert!(
            archive.exists(),
            "{} is missing: run scripts/build-images (scripts/test does)",
            archive.display()
        );
        let at = archive.display();
        let manifest: serde_json::Value =
            serde_json::from_str(&sh(&format!("tar -xOf {at} manifest.json"))).unwrap();
        let config_name = manifest[0]["Config"].as_str().unwrap().to_owned();
        let config: serde_json::Value =
            serde_json::from_str(&sh(&format!("tar -xOf {at} {config_name}"))).unwrap();
        let layers = manifest[0]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            manifest[0]["RepoTags"][0], "docker.io/local/phone:test",
            "{manifest}"
        );
        Image {
            archive,
            layers,
            config,
        }
    }

    /// `path mode owner` of every entry of every layer.
    fn listing(&self) -> Vec<(String, String, String)> {
        let mut entries = Vec::new();
        for layer in &self.layers {
            let text = sh(&format!(
                "tar -xOf {} {layer} | tar -tv --numeric-owner -f -",
                self.archive.display()
            ));
            for line in text.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() >= 6 {
                    let path = fields[5].trim_start_matches('.').trim_end_matches('/');
                    entries.push((path.to_owned(), fields[0].to_owned(), fields[1].to_owned()));
                }
            }
        }
        entries
    }

    fn file(&self, path: &str) -> String {
        self.layers
            .iter()
            .map(|layer| {
                Command::new("sh")
                    .args([
                        "-c",
                        &format!(
                            "tar -xOf {} {layer} | tar -xOf - .{path}",
                            self.archive.display()
                        ),
                    ])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// What the final stage's COPY lines put where: (destination path, how it is made).
fn copied_paths() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for (keyword, rest) in final_stage() {
        if keyword != "COPY" {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (stage, words) = match words[0].strip_prefix("--from=") {
            Some(stage) => (Some(stage), &words[1..]),
            None => (None, &words[..]),
        };
        let (dest, sources) = words.split_last().unwrap();
        let dest = dest.trim_end_matches('/');
        for source in sources {
            match stage {
                // The release binaries: one file each.
                Some("build") => {
                    let name = Path::new(source).file_name().unwrap().to_string_lossy();
                    paths.insert(format!("{dest}/{name}"));
                }
                // The prompts: one WAV per line of the list make-prompts reads.
                Some("prompts") => {
                    let list =
                        std::fs::read_to_string(repo().join("services/voicemail/prompts.tsv"))
                            .unwrap();
                    for line in list.lines() {
                        let name = line.split('\t').next().unwrap_or("");
                        if !name.is_empty() && !name.starts_with('#') {
                            paths.insert(format!("{dest}/{name}.wav"));
                        }
                    }
                }
                Some(other) => {
                    panic!("a COPY from stage {other}: teach this test and scripts/build-images")
                }
                // From the repository: the folder's files.
                None => {
                    let source = repo().join(source);
                    if source.is_dir() {
                        for entry in std::fs::read_dir(&source).unwrap() {
                            let name = entry.unwrap().file_name();
                            paths.insert(format!("{dest}/{}", name.to_string_lossy()));
                        }
                    } else {
                        paths.insert(dest.to_owned());
                    }
                }
            }
        }
    }
    paths
}

#[test]
fn the_registry_free_image_is_the_dockerfiles_final_stage() {
    let image = Image::open();
    let stage = final_stage();
    let value = |keyword: &str| {
        stage
            .iter()
            .rev()
            .find(|(k, _)| k == keyword)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the final stage has no {keyword}"))
    };
    assert_eq!(stage[0].1, "docker.io/library/debian:bookworm-slim");

    // The configuration: user, folder, command.
    let config = &image.config["config"];
    assert_eq!(config["User"], value("USER"));
    assert_eq!(config["User"], "10001:10001");
    assert_eq!(config["WorkingDir"], value("WORKDIR"));
    let cmd: serde_json::Value = serde_json::from_str(&value("CMD")).unwrap();
    assert_eq!(config["Cmd"], cmd);
    for port in value("EXPOSE").split_whitespace() {
        let first = port.split(['-', '/']).next().unwrap();
        let proto = port.split('/').nth(1).unwrap_or("tcp");
        assert!(
            config["ExposedPorts"]
                .get(format!("{first}/{proto}"))
                .is_some(),
            "EXPOSE {port}"
        );
    }

    // The files: everything the COPY lines put in, the binaries executable.
    let listing = image.listing();
    let present: BTreeSet<&str> = listing.iter().map(|(p, _, _)| p.as_str()).collect();
    let expected = copied_paths();
    assert!(expected.len() > 10, "{expected:?}");
    let missing: Vec<&String> = expected
        .iter()
        .filter(|p| !present.contains(p.as_str()))
        .collect();
    assert!(missing.is_empty(), "missing from the image: {missing:?}");
    for (path, mode, _) in &listing {
        if path.starts_with("/usr/local/bin/") && expected.contains(path) {
            assert!(mode.starts_with("-rwx"), "{path} is executable: {mode}");
        }
    }
    let program = cmd[0].as_str().unwrap();
    assert!(
        present.contains(program),
        "the command {program} is in the image"
    );

    // The user the Dockerfile makes: phone, 10001, home and data folder its own.
    let passwd = image.file("/etc/passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("phone:x:10001:10001:") && l.contains(":/var/lib/phone:")),
        "{passwd}"
    );
    assert!(image
        .file("/etc/group")
        .lines()
        .any(|l| l.starts_with("phone:x:10001:")));
    let data = listing
        .iter()
        .find(|(p, _, _)| p == "/var/lib/phone")
        .expect("/var/lib/phone");
    assert_eq!(data.2, "10001/10001", "{data:?}");
    // What the RUN line installs.
    for package in ["ca-certificates", "tzdata"] {
        let status = image.file("/var/lib/dpkg/status");
        assert!(
            status.contains(&format!("Package: {package}\n")),
            "{package} is installed"
        );
    }
}
