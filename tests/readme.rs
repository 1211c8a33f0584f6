//! The README's C++ and Python examples are the files the test suites build and run (ctest runs
//! cpp_quickstart_test, pytest runs examples/quickstart.py), so they must agree verbatim.

use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn readme_examples_are_the_tested_files() {
    let readme = read("README.md");
    for (file, fence) in
        [("cpp_demo/tests/cpp_quickstart_test.cpp", "cpp"), ("bindings/python/examples/quickstart.py", "python")]
    {
        let block = format!("```{fence}\n{}```", read(file));
        assert!(readme.contains(&block), "README.md does not show {file} verbatim in a ```{fence} block");
    }
}

/// The README's layout table names paths that exist, and every module of `src/` (a file or a
/// folder) is in it, so the table cannot fall behind the code.
#[test]
fn readme_layout_table_matches_the_tree() {
    let readme = read("README.md");
    let table = readme.split("## Layout\n").nth(1).expect("README has a Layout section");
    let table = table.split("\n## ").next().unwrap();
    let mut listed = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        for path in first.split('`').skip(1).step_by(2) {
            let on_disk = Path::new(env!("CARGO_MANIFEST_DIR")).join(path.trim_end_matches('/'));
            assert!(on_disk.exists(), "the README's layout table names '{path}', which does not exist");
            listed.push(path.trim_end_matches('/').to_string());
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name == "lib.rs" || name == "bin" {
            continue;
        }
        let path = format!("src/{name}");
        assert!(listed.contains(&path), "src/{name} is missing from the README's layout table");
    }
    assert!(listed.iter().any(|p| p == "src/bin/asfda"), "the CLI is missing from the layout table");
}
