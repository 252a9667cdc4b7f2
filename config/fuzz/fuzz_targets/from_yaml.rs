//! Any text: `from_yaml` returns, never panics; whatever loads validates and prints back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = config::from_yaml(text) else {
        return;
    };
    let _ = loaded.config.validate();
    if let Ok(printed) = config::to_yaml(&loaded.config) {
        let back = config::from_yaml(&printed).map(|l| l.config);
        assert_eq!(
            back.ok().as_ref(),
            Some(&loaded.config),
            "printed config did not load back"
        );
    }
});
