// Package layering holds the test that keeps realmnet's import graph as
// docs/architecture.md documents it.
//
// The table between the markers <!-- layering:begin --> and
// <!-- layering:end --> in docs/architecture.md lists every package of the
// module (every directory with a non-test .go file), the realmnet packages
// it may import, and whether only tests may import it. The test parses the
// imports of every non-test .go file and fails, naming the file, the import
// and the table row, when the code and the table disagree. It also checks
// the table itself: it must be acyclic, core must import nothing of
// realmnet, and no package that is not test-only may import a test-only
// one. Imports made by _test.go files are not checked.
package layering
