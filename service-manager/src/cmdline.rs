//! Kernel command line settings for services: every `zos.KEY=VALUE` word becomes the
//! environment variable `ZOS_KEY=VALUE` of every service (`zos.runmode=test` ->
//! `ZOS_RUNMODE=test`). Words without `=` set the variable to `1`.

/// The `(name, value)` environment pairs for the `zos.*` words of `cmdline`, in order;
/// a later word wins over an earlier one with the same key.
pub fn zos_env(cmdline: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some(setting) = word.strip_prefix("zos.") else {
            continue;
        };
        let (key, value) = setting.split_once('=').unwrap_or((setting, "1"));
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            continue;
        }
        let name = format!("ZOS_{}", key.to_ascii_uppercase().replace('-', "_"));
        out.retain(|(n, _)| *n != name);
        out.push((name, value.to_string()));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn zos_words_become_variables() {
        let env = zos_env("console=ttyS0 zos.runmode=test zos.api=tcp:0.0.0.0:8080 quiet zos.debug zos.run-mode=x");
        let want: Vec<(String, String)> = [
            ("ZOS_RUNMODE", "test"),
            ("ZOS_API", "tcp:0.0.0.0:8080"),
            ("ZOS_DEBUG", "1"),
            ("ZOS_RUN_MODE", "x"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(env, want);
    }

    #[test]
    fn later_wins_and_junk_is_ignored() {
        let env = zos_env("zos.runmode=dev zos.=x zos.a$b=1 zos.runmode=prod");
        assert_eq!(env, [("ZOS_RUNMODE".to_string(), "prod".to_string())]);
    }
}
