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
