// Command echo_app is a small HTTP backend for the e5s-proxy demo and tests.
//
// It listens on the -listen address and responds to every request with 200
// and a JSON description of the request: method, path, all headers (a map of
// lists, with names in Go's canonical form such as X-Peer-Spiffe-Id), the
// X-Peer-SPIFFE-ID header value and the body length. The path /echo returns
// the request body instead, with the request's Content-Type. It logs one
// line per request to stderr.
package main

import (
	"encoding/json"
	"flag"
	"io"
	"log"
	"net/http"
)

// peerIDHeader is the header in which the inbound proxy passes the
// client's SPIFFE ID to the application.
const peerIDHeader = "X-Peer-SPIFFE-ID"

type requestReport struct {
	Method       string              `json:"method"`
	Path         string              `json:"path"`
	Headers      map[string][]string `json:"headers"`
	PeerSPIFFEID string              `json:"peer_spiffe_id"`
	BodyLength   int                 `json:"body_length"`
}

func handle(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		log.Printf("%s %s: reading the request body failed: %v", r.Method, r.URL.Path, err)
		http.Error(w, "reading the request body failed", http.StatusBadRequest)
		return
	}
	log.Printf("%s %s from %s peer=%q body=%d bytes",
		r.Method, r.URL.Path, r.RemoteAddr, r.Header.Get(peerIDHeader), len(body))

	if r.URL.Path == "/echo" {
		contentType := r.Header.Get("Content-Type")
		if contentType == "" {
			contentType = "application/octet-stream"
		}
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(http.StatusOK)
		w.Write(body)
		return
	}

	headers := map[string][]string(r.Header.Clone())
	// Go's server moves Host out of the header map, so put it back.
	headers["Host"] = []string{r.Host}
	report := requestReport{
		Method:       r.Method,
		Path:         r.URL.Path,
		Headers:      headers,
		PeerSPIFFEID: r.Header.Get(peerIDHeader),
		BodyLength:   len(body),
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if err := json.NewEncoder(w).Encode(report); err != nil {
		log.Printf("%s %s: writing the response failed: %v", r.Method, r.URL.Path, err)
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address (host:port) to listen on")
	flag.Parse()

	log.Printf("echo_app listening on %s", *listen)
	if err := http.ListenAndServe(*listen, http.HandlerFunc(handle)); err != nil {
		log.Fatalf("echo_app: serving on %s failed: %v", *listen, err)
	}
}
