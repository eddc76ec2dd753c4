# Grüße für alle — 日本語 and emoji 😀
GREETINGS = { de: "Hallo", ja: "こんにちは" }.freeze

def greet(lang)
  "#{GREETINGS.fetch(lang)} 😀█"
end
