// mlnode: one hashicorp/memberlist node on loopback, for the side-by-side crash
// detection benchmark (scripts/bench/vs_memberlist.py). Written for mesh; it uses
// only memberlist's public API.
//
// Every line on stdout starts with the wall clock in seconds since the epoch
// (microsecond resolution, taken when the line is written):
//
//	<ts> ready <name> <port>     listening
//	<ts> join <name>             NotifyJoin (a member became alive)
//	<ts> leave <name>            NotifyLeave (a member is dead or left)
//	<ts> log <memberlist log>    memberlist's own log line (e.g. "Suspect X has
//	                             failed, no acks received"), with -log
//
// Build (Debian/Ubuntu: apt-get install golang-go golang-github-hashicorp-memberlist-dev):
//
//	mkdir -p bench-out/mlbench/src/mlnode
//	cp scripts/bench/memberlist/main.go bench-out/mlbench/src/mlnode/
//	cd bench-out/mlbench/src/mlnode && \
//	  GOPATH=$PWD/../..:/usr/share/gocode GO111MODULE=off go build -o ../../mlnode
//
// vs_memberlist.py does this itself when bench-out/mlbench/mlnode is missing.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

var outMu sync.Mutex
var out = bufio.NewWriter(os.Stdout)

// emit writes one timestamped line and flushes it, so the driver reads it at once.
func emit(kind, text string) {
	now := time.Now()
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(out, "%d.%06d %s %s\n", now.Unix(), now.Nanosecond()/1000, kind, text)
	out.Flush()
}

type events struct{}

func (events) NotifyJoin(n *memberlist.Node)   { emit("join", n.Name) }
func (events) NotifyLeave(n *memberlist.Node)  { emit("leave", n.Name) }
func (events) NotifyUpdate(n *memberlist.Node) {}

// logLines turns memberlist's log output into "log" lines.
type logLines struct{}

func (logLines) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		emit("log", line)
	}
	return len(p), nil
}

func main() {
	name := flag.String("name", "", "node name")
	port := flag.Int("port", 0, "UDP+TCP port on 127.0.0.1 (0: any free one)")
	join := flag.String("join", "", "HOST:PORT of a member to join through")
	withLog := flag.Bool("log", false, "copy memberlist's log (INFO and up) to stdout")
	flag.Parse()

	conf := memberlist.DefaultLANConfig()
	conf.Name = *name
	conf.BindAddr = "127.0.0.1"
	conf.BindPort = *port
	conf.AdvertiseAddr = "127.0.0.1"
	conf.AdvertisePort = *port
	conf.Events = events{}
	var sink io.Writer = io.Discard
	if *withLog {
		sink = logLines{}
	}
	conf.Logger = log.New(&levelFilter{sink}, "", 0)

	m, err := memberlist.Create(conf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "create:", err)
		os.Exit(1)
	}
	emit("ready", fmt.Sprintf("%s %d", *name, m.LocalNode().Port))
	if *join != "" {
		for attempt := 0; attempt < 100; attempt++ {
			if _, err := m.Join([]string{*join}); err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	_ = m.Leave(time.Second)
	_ = m.Shutdown()
}

// levelFilter drops memberlist's DEBUG lines except the probe ones we time.
type levelFilter struct{ w io.Writer }

func (f *levelFilter) Write(p []byte) (int, error) {
	s := string(p)
	if strings.Contains(s, "[DEBUG]") && !strings.Contains(s, "Failed ping") {
		return len(p), nil
	}
	return f.w.Write(p)
}
