//! The kernel command line: the parameters the init reads from /proc/cmdline.

/// Splits a command line into `key` or `key=value` words, as the kernel does: words are
/// separated by whitespace, and double quotes group a value with spaces (the quotes dropped).
pub fn parse(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (w, None),
        })
        .collect()
}

/// The modules asked for with `slipway.modules=a,b` (the parameter may appear several times).
pub fn modules(params: &[(String, Option<String>)]) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| k == "slipway.modules")
        .filter_map(|(_, v)| v.as_deref())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keys_and_quoted_values() {
        let p = parse("console=ttyS0 quiet  panic=-1 msg=\"two words\" x=a=b\n");
        assert_eq!(
            p,
            vec![
                ("console".into(), Some("ttyS0".into())),
                ("quiet".into(), None),
                ("panic".into(), Some("-1".into())),
                ("msg".into(), Some("two words".into())),
                ("x".into(), Some("a=b".into())),
            ]
        );
    }

    #[test]
    fn module_lists_are_split_trimmed_and_merged() {
        let p = parse("slipway.modules=virtio_net,,overlay quiet slipway.modules=squashfs");
        assert_eq!(modules(&p), ["virtio_net", "overlay", "squashfs"]);
        assert!(modules(&parse("quiet slipway.modules=")).is_empty());
    }
}
