// Command echo_app is a small HTTP backend for the e5s-proxy demo and tests.
//
// It listens on the -listen address and responds to every request with 200
// and a JSON description of the request: method, path, all headers (a map of
// lists, with names in Go's canonical form such as X-Peer-Spiffe-Id), the
// X-Peer-SPIFFE-ID header value and the body length. Some paths do more:
//
//	/echo       returns the request body, with the request's Content-Type
//	/bytes?n=N  streams N bytes without holding them in memory
//	/sink       reads and discards the body (?delay_ms=D sleeps D ms per
//	            64 KiB read, to act as a slow reader) and reports its length
//	/websocket  a WebSocket echo (RFC 6455): each data frame comes back
//
// It logs one line per request to stderr.
package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// websocketGUID is the fixed GUID of RFC 6455 section 1.3 for computing
// Sec-WebSocket-Accept.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// maxFramePayload bounds one WebSocket frame, so a test client's mistake
// cannot make the app allocate without limit.
const maxFramePayload = 16 << 20

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
	switch r.URL.Path {
	case "/bytes":
		streamBytes(w, r)
		return
	case "/sink":
		sink(w, r)
		return
	case "/websocket":
		websocketEcho(w, r)
		return
	}

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

func streamBytes(w http.ResponseWriter, r *http.Request) {
	count, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || count < 0 {
		http.Error(w, "n must be a non-negative integer", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(count, 10))
	block := []byte(strings.Repeat("x", 64<<10))
	for count > 0 {
		size := int64(len(block))
		if count < size {
			size = count
		}
		if _, err := w.Write(block[:size]); err != nil {
			log.Printf("GET /bytes: writing failed: %v", err)
			return
		}
		count -= size
	}
	log.Printf("%s /bytes from %s done", r.Method, r.RemoteAddr)
}

func sink(w http.ResponseWriter, r *http.Request) {
	delay, _ := strconv.Atoi(r.URL.Query().Get("delay_ms"))
	buffer := make([]byte, 64<<10)
	total := 0
	for {
		n, err := r.Body.Read(buffer)
		total += n
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			log.Printf("%s /sink: reading failed after %d bytes: %v", r.Method, total, err)
			http.Error(w, "reading the request body failed", http.StatusBadRequest)
			return
		}
		if delay > 0 {
			time.Sleep(time.Duration(delay) * time.Millisecond)
		}
	}
	log.Printf("%s /sink from %s read %d bytes", r.Method, r.RemoteAddr, total)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]int{"body_length": total})
}

func websocketEcho(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "expected Upgrade: websocket", http.StatusBadRequest)
		return
	}
	digest := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + websocketGUID))
	hijacker, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "connection cannot be taken over", http.StatusInternalServerError)
		return
	}
	conn, buffered, err := hijacker.Hijack()
	if err != nil {
		log.Printf("/websocket: hijack failed: %v", err)
		return
	}
	defer conn.Close()

	buffered.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
	buffered.WriteString("Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(digest[:]) + "\r\n\r\n")
	if err := buffered.Flush(); err != nil {
		return
	}
	log.Printf("/websocket from %s peer=%q switched", r.RemoteAddr, r.Header.Get(peerIDHeader))

	for {
		first, payload, err := readFrame(buffered.Reader)
		if err != nil {
			log.Printf("/websocket from %s ended: %v", r.RemoteAddr, err)
			return
		}
		if err := writeFrame(buffered.Writer, first, payload); err != nil {
			return
		}
		if first&0x0f == 0x8 {
			log.Printf("/websocket from %s closed by the client", r.RemoteAddr)
			return
		}
	}
}

// readFrame reads one client frame and returns its first byte (FIN and
// opcode) and its unmasked payload.
func readFrame(reader *bufio.Reader) (byte, []byte, error) {
	var header [2]byte
	if _, err := io.ReadFull(reader, header[:]); err != nil {
		return 0, nil, err
	}
	length := uint64(header[1] & 0x7f)
	switch length {
	case 126:
		var extended [2]byte
		if _, err := io.ReadFull(reader, extended[:]); err != nil {
			return 0, nil, err
		}
		length = uint64(binary.BigEndian.Uint16(extended[:]))
	case 127:
		var extended [8]byte
		if _, err := io.ReadFull(reader, extended[:]); err != nil {
			return 0, nil, err
		}
		length = binary.BigEndian.Uint64(extended[:])
	}
	if length > maxFramePayload {
		return 0, nil, errors.New("frame too large")
	}
	var mask [4]byte
	masked := header[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(reader, mask[:]); err != nil {
			return 0, nil, err
		}
	}
	payload := make([]byte, length)
	if _, err := io.ReadFull(reader, payload); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
	}
	return header[0], payload, nil
}

// writeFrame writes one unmasked server frame, as RFC 6455 requires.
func writeFrame(writer *bufio.Writer, first byte, payload []byte) error {
	writer.WriteByte(first)
	switch {
	case len(payload) < 126:
		writer.WriteByte(byte(len(payload)))
	case len(payload) <= 0xffff:
		writer.WriteByte(126)
		var extended [2]byte
		binary.BigEndian.PutUint16(extended[:], uint16(len(payload)))
		writer.Write(extended[:])
	default:
		writer.WriteByte(127)
		var extended [8]byte
		binary.BigEndian.PutUint64(extended[:], uint64(len(payload)))
		writer.Write(extended[:])
	}
	writer.Write(payload)
	return writer.Flush()
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address (host:port) to listen on")
	flag.Parse()

	log.Printf("echo_app listening on %s", *listen)
	if err := http.ListenAndServe(*listen, http.HandlerFunc(handle)); err != nil {
		log.Fatalf("echo_app: serving on %s failed: %v", *listen, err)
	}
}
