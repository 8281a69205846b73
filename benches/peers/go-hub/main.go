// go-hub: a benchmark peer written for this repository, following the design of the Go chat
// handler shequ-chat replaces: the hub pattern of gorilla/websocket's chat example. One hub
// goroutine owns the client map and takes register, unregister and broadcast on channels; each
// client has a 256-message send channel and a read and a write goroutine; a ping every 30 s,
// 60 s to answer; a client whose send channel is full is dropped. One connection per user: a
// new one evicts the old.
//
// The contract is shequ-chat's /ws for the load generator: GET /ws?token=JWT (HS256 with
// SECRET; `sub` is the user), and every {"type":"chat","content":C} a client sends goes to
// every client, the sender included, as one frame in shequ-chat's chat envelope
// {"type":"chat","id":N,"user_id":U,"username":U,"content":C,"ts":MS}, built once per
// broadcast. No validation, rate limit, history or metrics: it exists to be measured against.
//
// Usage: SECRET=... go-hub PORT        (listens on 127.0.0.1:PORT)
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

const (
	sendQueue    = 256
	pingInterval = 30 * time.Second
	pongTimeout  = 60 * time.Second
	writeTimeout = 10 * time.Second
	maxMessage   = 16384
)

type client struct {
	user string
	conn *websocket.Conn
	send chan []byte
}

type incoming struct {
	from *client
	raw  []byte
}

type hub struct {
	clients    map[*client]struct{}
	byUser     map[string]*client
	register   chan *client
	unregister chan *client
	broadcast  chan incoming
	lastID     uint64
}

// remove takes a client out of both maps and closes its send channel, once.
func (h *hub) remove(c *client) {
	if _, ok := h.clients[c]; !ok {
		return
	}
	delete(h.clients, c)
	if h.byUser[c.user] == c {
		delete(h.byUser, c.user)
	}
	close(c.send)
}

// envelope wraps what a client sent ({"type":"chat","content":C}) in the chat frame every
// receiver gets.
func (h *hub) envelope(from *client, raw []byte) []byte {
	var sent struct {
		Content string `json:"content"`
	}
	json.Unmarshal(raw, &sent)
	content, _ := json.Marshal(sent.Content)
	user, _ := json.Marshal(from.user)
	h.lastID++
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"type":"chat","id":%d,"user_id":%s,"username":%s,"content":%s,"ts":%d}`,
		h.lastID, user, user, content, time.Now().UnixMilli())
	return b.Bytes()
}

func (h *hub) run() {
	for {
		select {
		case c := <-h.register:
			if old, ok := h.byUser[c.user]; ok {
				h.remove(old)
			}
			h.clients[c] = struct{}{}
			h.byUser[c.user] = c
		case c := <-h.unregister:
			h.remove(c)
		case m := <-h.broadcast:
			frame := h.envelope(m.from, m.raw)
			for c := range h.clients {
				select {
				case c.send <- frame:
				default:
					h.remove(c)
				}
			}
		}
	}
}

func (c *client) readLoop(h *hub) {
	defer func() {
		h.unregister <- c
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessage)
	c.conn.SetReadDeadline(time.Now().Add(pongTimeout))
	c.conn.SetPongHandler(func(string) error {
		return c.conn.SetReadDeadline(time.Now().Add(pongTimeout))
	})
	for {
		kind, raw, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		if kind == websocket.TextMessage {
			h.broadcast <- incoming{from: c, raw: raw}
		}
	}
}

func (c *client) writeLoop() {
	ticker := time.NewTicker(pingInterval)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case frame, open := <-c.send:
			c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			if !open {
				c.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4001, ""))
				return
			}
			if err := c.conn.WriteMessage(websocket.TextMessage, frame); err != nil {
				return
			}
		case <-ticker.C:
			c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

// userOf checks an HS256 token and returns its `sub`.
func userOf(secret []byte, token string) (string, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, mac.Sum(nil)) {
		return "", false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", false
	}
	var claims struct {
		Sub any     `json:"sub"`
		Exp float64 `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Sub == nil {
		return "", false
	}
	if claims.Exp > 0 && float64(time.Now().Unix()) > claims.Exp {
		return "", false
	}
	return fmt.Sprint(claims.Sub), true
}

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: SECRET=... go-hub PORT")
	}
	port, err := strconv.Atoi(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	secret := []byte(os.Getenv("SECRET"))
	h := &hub{
		clients:    map[*client]struct{}{},
		byUser:     map[string]*client{},
		register:   make(chan *client),
		unregister: make(chan *client),
		broadcast:  make(chan incoming),
	}
	go h.run()
	upgrader := websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024}
	http.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		user, ok := userOf(secret, r.URL.Query().Get("token"))
		if !ok {
			http.Error(w, "invalid token", http.StatusUnauthorized)
			return
		}
		conn, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		c := &client{user: user, conn: conn, send: make(chan []byte, sendQueue)}
		h.register <- c
		go c.writeLoop()
		go c.readLoop(h)
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	server := &http.Server{Addr: addr, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(server.ListenAndServe())
}
