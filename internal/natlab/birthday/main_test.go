package birthday

import (
	"testing"

	"github.com/realmnet/realmnet/internal/natlab"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	natlab.RunIfChild(labRoles)
	goleak.VerifyTestMain(m)
}
