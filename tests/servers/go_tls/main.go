// An HTTPS server and client in Go, whose TLS is Go's own crypto/tls (no libssl): the agent
// must hook the executable itself.
//
//	go_tls server PORT             serves /hello (200) and anything else (404) over TLS
//	                               (HTTP/1.1 and HTTP/2 by ALPN), with a certificate made at start
//	go_tls client URL N h1|h2      N GET requests of URL on one connection, HTTP/1.1 or HTTP/2;
//	                               prints the status codes it got, one per line
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func certificate() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	template := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func serve(port string) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/hello" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "hello from Go over "+r.Proto+"\n")
	})
	server := &http.Server{
		Addr:      "127.0.0.1:" + port,
		Handler:   mux,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{certificate()}},
	}
	ln, err := net.Listen("tcp", server.Addr)
	if err != nil {
		panic(err)
	}
	fmt.Println("ready")
	panic(server.ServeTLS(ln, "", ""))
}

func client(url string, n int, proto string) {
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		MaxIdleConnsPerHost: 1,
	}
	if proto == "h2" {
		transport.ForceAttemptHTTP2 = true
	} else {
		// A non-nil empty map turns HTTP/2 off.
		transport.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	c := &http.Client{Transport: transport}
	for i := 0; i < n; i++ {
		resp, err := c.Get(url)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, resp.Proto)
	}
	transport.CloseIdleConnections()
}

func main() {
	if len(os.Args) >= 3 && os.Args[1] == "server" {
		serve(os.Args[2])
		return
	}
	if len(os.Args) >= 5 && os.Args[1] == "client" {
		n, err := strconv.Atoi(os.Args[3])
		if err != nil {
			panic(err)
		}
		client(os.Args[2], n, os.Args[4])
		return
	}
	fmt.Fprintln(os.Stderr, "usage: go_tls server PORT | go_tls client URL N h1|h2")
	os.Exit(2)
}
