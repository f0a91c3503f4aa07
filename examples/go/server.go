// A Go net/http server under rcluster, standard library only:
//
//	CGO_ENABLED=0 go build -o server examples/go/server.go
//	rcluster --listen 127.0.0.1:8080 --ready notify -- ./server
//
// It serves the socket rcluster passes at fd 3 (PORT without rcluster),
// says READY=1 on NOTIFY_SOCKET (Go speaks Unix datagrams, abstract names
// included), and drains on SIGTERM. http.Server.Shutdown alone closes idle
// keep-alive connections at once, racing with requests on their way; so it
// first stops accepting, marks every response `Connection: close` for a
// short grace, and only then shuts down.
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

const drainGrace = 500 * time.Millisecond

// snippet:start
func listener() (net.Listener, error) {
	if os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()) && os.Getenv("LISTEN_FDS") != "" {
		return net.FileListener(os.NewFile(3, "rcluster"))
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "3000"
	}
	return net.Listen("tcp", "127.0.0.1:"+port)
}

func notify(state string) {
	socket := os.Getenv("NOTIFY_SOCKET")
	if socket == "" {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		log.Printf("notify: %v", err)
		return
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		log.Printf("notify: %v", err)
	}
}

func main() {
	ln, err := listener()
	if err != nil {
		log.Fatal(err)
	}
	var draining atomic.Bool
	greeting := fmt.Sprintf("hello from go worker %s (pid %d)\n", os.Getenv("RCLUSTER_WORKER_ID"), os.Getpid())
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, greeting)
	})}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		draining.Store(true)
		ln.Close() // stop accepting: Serve returns
	}()

	notify("READY=1")
	if err := server.Serve(ln); err != nil && !draining.Load() {
		log.Fatal(err)
	}
	time.Sleep(drainGrace)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	server.Shutdown(ctx)
}
// snippet:end
